//! VQA v2: questions (`questions[{image_id, question, question_id}]`), annotations
//! (`annotations[{question_id, answers[{answer}], multiple_choice_answer}]`) and the accuracy
//! metric.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::read_json;
use crate::error::DataError;

/// One question with its human answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VqaItem {
    pub question_id: u64,
    pub image_id: u64,
    pub question: String,
    /// The human answers (ten in VQA v2); empty without annotations (test splits).
    pub answers: Vec<String>,
    /// The most common answer; empty without annotations.
    pub multiple_choice_answer: String,
}

#[derive(Deserialize)]
struct QuestionsFile {
    questions: Vec<Question>,
}

#[derive(Deserialize)]
struct Question {
    image_id: u64,
    question: String,
    question_id: u64,
}

#[derive(Deserialize)]
struct AnnotationsFile {
    annotations: Vec<Annotation>,
}

#[derive(Deserialize)]
struct Annotation {
    question_id: u64,
    answers: Vec<Answer>,
    multiple_choice_answer: String,
}

#[derive(Deserialize)]
struct Answer {
    answer: String,
}

/// Reads the questions, in file order, joined with their annotations when given. A question
/// without an annotation is a [`DataError::Format`] naming the annotation file.
pub fn read_vqa(questions: &Path, annotations: Option<&Path>) -> Result<Vec<VqaItem>, DataError> {
    let file: QuestionsFile = read_json(questions)?;
    let mut by_question: HashMap<u64, Annotation> = HashMap::new();
    if let Some(path) = annotations {
        let annotations: AnnotationsFile = read_json(path)?;
        by_question = annotations
            .annotations
            .into_iter()
            .map(|a| (a.question_id, a))
            .collect();
    }
    file.questions
        .into_iter()
        .map(|q| {
            let (answers, multiple_choice_answer) = match annotations {
                None => (Vec::new(), String::new()),
                Some(path) => {
                    let a = by_question.remove(&q.question_id).ok_or_else(|| {
                        DataError::format(
                            path,
                            format!("no annotation for question_id {}", q.question_id),
                        )
                    })?;
                    (
                        a.answers.into_iter().map(|x| x.answer).collect(),
                        a.multiple_choice_answer,
                    )
                }
            };
            Ok(VqaItem {
                question_id: q.question_id,
                image_id: q.image_id,
                question: q.question,
                answers,
                multiple_choice_answer,
            })
        })
        .collect()
}

/// The COCO file name of an image id, e.g. `coco_image_file_name("COCO_val2014_", 42)` →
/// `COCO_val2014_000000000042.jpg` (VQA v2 images are COCO 2014 images).
pub fn coco_image_file_name(prefix: &str, image_id: u64) -> String {
    format!("{prefix}{image_id:012}.jpg")
}

/// A light version of the official VQA answer normalisation: lower-case; punctuation removed
/// (a `.` between digits and `'` are kept, `,` between digits is dropped without a space);
/// number words `zero`..`ten` become digits; articles `a`, `an`, `the` are dropped; white space
/// collapsed. The official contraction table is not applied.
pub fn normalize_vqa_answer(answer: &str) -> String {
    let lower = answer.to_lowercase();
    let chars: Vec<char> = lower.chars().collect();
    let mut cleaned = String::with_capacity(lower.len());
    for (i, &c) in chars.iter().enumerate() {
        let digit_before = i > 0 && chars[i - 1].is_ascii_digit();
        let digit_after = chars.get(i + 1).is_some_and(char::is_ascii_digit);
        match c {
            '.' if digit_before && digit_after => cleaned.push(c),
            ',' if digit_before && digit_after => {}
            '\'' => cleaned.push(c),
            c if c.is_ascii_punctuation() => cleaned.push(' '),
            c => cleaned.push(c),
        }
    }
    const NUMBERS: [&str; 11] = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    ];
    let words: Vec<String> = cleaned
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .map(|w| match NUMBERS.iter().position(|n| *n == w) {
            Some(n) => n.to_string(),
            None => w.to_owned(),
        })
        .collect();
    words.join(" ")
}

/// VQA accuracy of one prediction: `min(#answers equal to the prediction / 3, 1)`, comparing
/// after [`normalize_vqa_answer`]. (The official script also averages this over the ten
/// leave-one-annotator-out subsets, which gives e.g. 0.3 instead of 1/3 for one match.)
pub fn vqa_accuracy(prediction: &str, answers: &[String]) -> f64 {
    let prediction = normalize_vqa_answer(prediction);
    let matches = answers
        .iter()
        .filter(|a| normalize_vqa_answer(a) == prediction)
        .count();
    (matches as f64 / 3.0).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::write;
    use super::*;

    #[test]
    fn readers_vqa_joins_questions_and_annotations() {
        let dir = tempfile::tempdir().unwrap();
        let questions = write(
            dir.path(),
            "q.json",
            br#"{"task_type": "Open-Ended", "questions": [
            {"image_id": 42, "question": "What color?", "question_id": 420},
            {"image_id": 42, "question": "How many?", "question_id": 421}]}"#,
        );
        let annotations = write(dir.path(), "a.json", br#"{"annotations": [
            {"question_id": 421, "image_id": 42, "answers": [{"answer": "2", "answer_id": 1}, {"answer": "two", "answer_id": 2}], "multiple_choice_answer": "2"},
            {"question_id": 420, "image_id": 42, "answers": [{"answer": "red"}], "multiple_choice_answer": "red"}]}"#);
        let items = read_vqa(&questions, Some(&annotations)).unwrap();
        assert_eq!(
            items[0],
            VqaItem {
                question_id: 420,
                image_id: 42,
                question: "What color?".into(),
                answers: vec!["red".into()],
                multiple_choice_answer: "red".into(),
            }
        );
        assert_eq!(items[1].answers, ["2", "two"]);
        let unannotated = read_vqa(&questions, None).unwrap();
        assert!(unannotated[1].answers.is_empty());
        let partial = write(dir.path(), "p.json", br#"{"annotations": []}"#);
        let err = read_vqa(&questions, Some(&partial)).unwrap_err();
        assert!(err.to_string().contains("question_id 420") && err.to_string().contains("p.json"));
        assert_eq!(
            coco_image_file_name("COCO_val2014_", 42),
            "COCO_val2014_000000000042.jpg"
        );
    }

    #[test]
    fn readers_vqa_accuracy_counts_matching_humans() {
        let answers: Vec<String> = [
            "yes", "yes", "Yes.", "no", "two", "2", "a dog", "3.5", "1,000", "x",
        ]
        .map(String::from)
        .into();
        assert_eq!(vqa_accuracy("yes", &answers), 1.0);
        assert_eq!(vqa_accuracy("no", &answers), 1.0 / 3.0);
        assert_eq!(vqa_accuracy("2", &answers), 2.0 / 3.0);
        assert_eq!(vqa_accuracy("the dog", &answers), 1.0 / 3.0);
        assert_eq!(vqa_accuracy("3.5", &answers), 1.0 / 3.0);
        assert_eq!(vqa_accuracy("1000", &answers), 1.0 / 3.0);
        assert_eq!(vqa_accuracy("cat", &answers), 0.0);
        assert_eq!(normalize_vqa_answer("  The Red-Car! "), "red car");
        assert_eq!(normalize_vqa_answer("don't"), "don't");
    }
}
