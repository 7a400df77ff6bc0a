//! VQA v2: questions (`questions[{image_id, question, question_id}]`), annotations
//! (`annotations[{question_id, answers[{answer}], multiple_choice_answer}]`) and the accuracy
//! metric with its answer normalisation, as the official evaluation computes them
//! (github.com/GT-Vision-Lab/VQA, `PythonEvaluationTools/vqaEvaluation/vqaEval.py`, master of
//! 2021-03-11).

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

/// Characters that `processPunctuation` removes or replaces by a space.
const PUNCTUATION: [char; 21] = [
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
    '?', '!',
];

/// Number words that `processDigitArticle` writes as digits (`manualMap`).
const NUMBER_WORDS: [(&str, &str); 12] = [
    ("none", "0"),
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
];

/// The official `contractions` table, all 120 entries, sorted by key for binary search. (The
/// capitalised keys can never match: words are lower-cased first, as in the official script.)
const CONTRACTIONS: [(&str, &str); 120] = [
    ("'ow'sat", "'ow's'at"),
    ("'ows'at", "'ow's'at"),
    ("I'dve", "I'd've"),
    ("Id've", "I'd've"),
    ("Im", "I'm"),
    ("Ive", "I've"),
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldn'tve", "couldn't've"),
    ("couldnt", "couldn't"),
    ("couldnt've", "couldn't've"),
    ("couldve", "could've"),
    ("didnt", "didn't"),
    ("doesnt", "doesn't"),
    ("dont", "don't"),
    ("hadn'tve", "hadn't've"),
    ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"),
    ("hasnt", "hasn't"),
    ("havent", "haven't"),
    ("he'dve", "he'd've"),
    ("hed", "he'd"),
    ("hed've", "he'd've"),
    ("hes", "he's"),
    ("howd", "how'd"),
    ("howll", "how'll"),
    ("hows", "how's"),
    ("isnt", "isn't"),
    ("it'dve", "it'd've"),
    ("itd", "it'd"),
    ("itd've", "it'd've"),
    ("itll", "it'll"),
    ("let's", "let's"),
    ("maam", "ma'am"),
    ("mightn'tve", "mightn't've"),
    ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"),
    ("mightve", "might've"),
    ("mustnt", "mustn't"),
    ("mustve", "must've"),
    ("neednt", "needn't"),
    ("notve", "not've"),
    ("oclock", "o'clock"),
    ("oughtnt", "oughtn't"),
    ("ow's'at", "'ow's'at"),
    ("shant", "shan't"),
    ("she'dve", "she'd've"),
    ("she's", "she's"),
    ("shed've", "she'd've"),
    ("shouldn'tve", "shouldn't've"),
    ("shouldnt", "shouldn't"),
    ("shouldnt've", "shouldn't've"),
    ("shouldve", "should've"),
    ("somebody'd", "somebodyd"),
    ("somebody'dve", "somebody'd've"),
    ("somebodyd've", "somebody'd've"),
    ("somebodyll", "somebody'll"),
    ("somebodys", "somebody's"),
    ("someone'dve", "someone'd've"),
    ("someoned", "someone'd"),
    ("someoned've", "someone'd've"),
    ("someonell", "someone'll"),
    ("someones", "someone's"),
    ("something'dve", "something'd've"),
    ("somethingd", "something'd"),
    ("somethingd've", "something'd've"),
    ("somethingll", "something'll"),
    ("thats", "that's"),
    ("there'dve", "there'd've"),
    ("thered", "there'd"),
    ("thered've", "there'd've"),
    ("therere", "there're"),
    ("theres", "there's"),
    ("they'dve", "they'd've"),
    ("theyd", "they'd"),
    ("theyd've", "they'd've"),
    ("theyll", "they'll"),
    ("theyre", "they're"),
    ("theyve", "they've"),
    ("twas", "'twas"),
    ("wasnt", "wasn't"),
    ("we'dve", "we'd've"),
    ("wed've", "we'd've"),
    ("werent", "weren't"),
    ("weve", "we've"),
    ("whatll", "what'll"),
    ("whatre", "what're"),
    ("whats", "what's"),
    ("whatve", "what've"),
    ("whens", "when's"),
    ("whered", "where'd"),
    ("wheres", "where's"),
    ("whereve", "where've"),
    ("who'dve", "who'd've"),
    ("whod", "who'd"),
    ("whod've", "who'd've"),
    ("wholl", "who'll"),
    ("whos", "who's"),
    ("whove", "who've"),
    ("whyll", "why'll"),
    ("whyre", "why're"),
    ("whys", "why's"),
    ("wont", "won't"),
    ("wouldn'tve", "wouldn't've"),
    ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"),
    ("wouldve", "would've"),
    ("y'all'dve", "y'all'd've"),
    ("y'alld've", "y'all'd've"),
    ("y'allll", "y'all'll"),
    ("yall", "y'all"),
    ("yall'd've", "y'all'd've"),
    ("yall'll", "y'all'll"),
    ("you'dve", "you'd've"),
    ("youd", "you'd"),
    ("youd've", "you'd've"),
    ("youll", "you'll"),
    ("youre", "you're"),
    ("youve", "you've"),
];

/// White space as Python's `str.split()` and `str.strip()` see it: Unicode white space plus
/// the ASCII separators U+001C..U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `answer.replace('\n', ' ').replace('\t', ' ').strip()`, done to every answer first.
fn strip_answer(answer: &str) -> String {
    answer
        .replace(['\n', '\t'], " ")
        .trim_matches(is_python_space)
        .to_owned()
}

/// The official `processPunctuation`. Each punctuation character is removed when it touches a
/// space somewhere in the text (`p + ' '` or `' ' + p`) or when the text holds a comma between
/// digits anywhere, and replaced by a space otherwise. Then the first 32 periods not followed
/// by a digit are removed (the official `periodStrip.sub("", text, re.UNICODE)` passes
/// `re.UNICODE`, 32, as the count). Digits are ASCII digits, as in the Python 2 script.
fn process_punctuation(text: &str) -> String {
    let bytes = text.as_bytes();
    let comma_between_digits = bytes
        .windows(3)
        .any(|w| w[0].is_ascii_digit() && w[1] == b',' && w[2].is_ascii_digit());
    let mut out = text.to_owned();
    for p in PUNCTUATION {
        let touches_space = text.contains(&format!("{p} ")) || text.contains(&format!(" {p}"));
        let replacement = if touches_space || comma_between_digits {
            ""
        } else {
            " "
        };
        out = out.replace(p, replacement);
    }
    let chars: Vec<char> = out.chars().collect();
    let mut stripped = String::with_capacity(out.len());
    let mut removed = 0;
    for (i, &c) in chars.iter().enumerate() {
        let digit_next = chars.get(i + 1).is_some_and(char::is_ascii_digit);
        if c == '.' && !digit_next && removed < 32 {
            removed += 1;
        } else {
            stripped.push(c);
        }
    }
    stripped
}

/// The official `processDigitArticle`: lower-case, split on white space, number words
/// `none`, `zero`..`ten` to digits, articles `a`, `an`, `the` dropped, then each word through
/// the contractions table (`dont` → `don't`), joined with single spaces.
fn process_digit_article(text: &str) -> String {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(is_python_space)
        .filter(|w| !w.is_empty())
        .map(|w| {
            NUMBER_WORDS
                .iter()
                .find(|(word, _)| *word == w)
                .map_or(w, |(_, digits)| digits)
        })
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .map(
            |w| match CONTRACTIONS.binary_search_by(|(key, _)| (*key).cmp(w)) {
                Ok(i) => CONTRACTIONS[i].1,
                Err(_) => w,
            },
        )
        .collect();
    words.join(" ")
}

/// The official VQA answer normalisation: `\n` and `\t` become spaces and the answer is
/// stripped; then `processPunctuation` (punctuation removed or replaced by a space, periods
/// not followed by a digit removed, so `3.5` stays and `1,000` becomes `1000`) and
/// `processDigitArticle` (lower-case, number words to digits, articles dropped, contractions
/// table): `"Two dogs."` → `"2 dogs"`. [`vqa_accuracy`] applies it only when the human answers
/// differ, as the official script does.
pub fn normalize_vqa_answer(answer: &str) -> String {
    process_digit_article(&process_punctuation(&strip_answer(answer)))
}

/// The official VQA accuracy of one prediction against the human answers (ten in VQA v2).
///
/// As in the official script: every answer and the prediction get `\n`/`\t` replaced by
/// spaces and are stripped; only when the stripped human answers are not all equal are they
/// and the prediction normalised ([`normalize_vqa_answer`]), so when all humans agree the
/// prediction must equal their answer after stripping alone. Then for each human answer in
/// turn, `min(#other answers equal to the prediction / 3, 1)`, and the mean of these over all
/// answers: with ten answers, 1, 2, 3 and 4 or more matches give 0.3, 0.6, 0.9 and 1.0. No
/// answers give 0 (the official script divides by zero).
pub fn vqa_accuracy(prediction: &str, answers: &[String]) -> f64 {
    if answers.is_empty() {
        return 0.0;
    }
    let mut answers: Vec<String> = answers.iter().map(|a| strip_answer(a)).collect();
    let mut prediction = strip_answer(prediction);
    if answers.iter().any(|a| *a != answers[0]) {
        for answer in &mut answers {
            *answer = process_digit_article(&process_punctuation(answer));
        }
        prediction = process_digit_article(&process_punctuation(&prediction));
    }
    let matching = answers.iter().filter(|a| **a == prediction).count();
    let mut total = 0.0;
    for answer in &answers {
        // The matches among the other answers, leaving this one out.
        let others = matching - usize::from(*answer == prediction);
        total += (others as f64 / 3.0).min(1.0);
    }
    total / answers.len() as f64
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

    /// Answers: `k` copies of `hit` and `10 - k` of `miss`.
    fn humans(hit: &str, k: usize, miss: &str) -> Vec<String> {
        let mut answers = vec![hit.to_owned(); k];
        answers.resize(10, miss.to_owned());
        answers
    }

    #[test]
    fn readers_vqa_normalisation_follows_the_official_script() {
        let check = |answer: &str, want: &str| {
            assert_eq!(normalize_vqa_answer(answer), want, "{answer:?}");
        };
        check("Two dogs.", "2 dogs");
        check("dont", "don't");
        check("couldnt've", "couldn't've");
        check("don't", "don't"); // `'` is not punctuation to the official script
        check("the cat", "cat");
        check("An Apple", "apple");
        check("none", "0");
        check("ten", "10");
        check("3.5", "3.5");
        check(".5", ".5");
        check("5.", "5");
        check("a.m.", "am");
        check("Mr. Smith", "mr smith");
        check("1,000", "1000");
        // A comma between digits anywhere makes every punctuation character vanish.
        check("1,000 dogs/cats", "1000 dogscats");
        check("dogs/cats", "dogs cats");
        check("red,blue", "red blue");
        check("red, blue", "red blue");
        // A character next to a space anywhere is removed everywhere, else replaced by one.
        check("t-shirt", "t shirt");
        check("t-shirt - red", "tshirt red");
        check("yes!!", "yes");
        check("(yes)", "yes");
        check("  Yes\t\n", "yes");
        check("a\u{1c}dog", "dog");
        // Capitalised keys of the table never match, as words are lower-cased first.
        check("Im", "im");
        // Only the first 32 periods not followed by a digit are removed.
        check(&format!("{}x", ".".repeat(33)), ".x");
        check("", "");
    }

    #[test]
    fn readers_vqa_contractions_table_is_sorted_and_complete() {
        assert!(CONTRACTIONS.windows(2).all(|w| w[0].0 < w[1].0));
        for (key, value) in CONTRACTIONS {
            if key.chars().all(|c| !c.is_uppercase()) {
                assert_eq!(process_digit_article(key), value, "{key}");
            }
        }
        assert_eq!(
            process_digit_article("youre theyre isnt"),
            "you're they're isn't"
        );
    }

    #[test]
    fn readers_vqa_accuracy_averages_over_left_out_humans() {
        let close = |got: f64, want: f64| (got - want).abs() < 1e-12;
        let want = [0.0, 0.3, 0.6, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        for (k, want) in want.into_iter().enumerate() {
            let got = vqa_accuracy("blue", &humans("blue", k, "red"));
            assert!(close(got, want), "{k} matches: {got}");
        }
        // Answers and prediction are normalised when the humans disagree.
        let answers: Vec<String> = [
            "Two", "two.", "2", "cat", "cat", "cat", "cat", "cat", "cat", "cat",
        ]
        .map(String::from)
        .into();
        assert!(close(vqa_accuracy("2", &answers), 0.9));
        assert!(close(vqa_accuracy(" TWO!\n", &answers), 0.9));
        assert!(close(vqa_accuracy("the cat", &answers), 1.0));
        // When they all agree nothing but stripping is done, as in the official script.
        let yes = humans("yes", 10, "");
        assert_eq!(vqa_accuracy("yes", &yes), 1.0);
        assert_eq!(vqa_accuracy("\tyes \n", &yes), 1.0);
        assert_eq!(vqa_accuracy("Yes", &yes), 0.0);
        assert_eq!(vqa_accuracy("yes.", &yes), 0.0);
        let mostly_yes = humans("yes", 9, "no");
        assert!(close(vqa_accuracy("Yes.", &mostly_yes), 1.0));
        assert!(close(vqa_accuracy("no", &mostly_yes), 0.3));
        // Stripping comes before the agreement check.
        assert_eq!(vqa_accuracy("Yes", &humans("yes", 5, " yes\n")), 0.0);
        // One human answer is never matched by the others; none gives 0.
        assert_eq!(vqa_accuracy("red", &["red".to_owned()]), 0.0);
        assert_eq!(vqa_accuracy("red", &[]), 0.0);
    }
}
