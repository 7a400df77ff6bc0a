//! A `data.tokenizer` whose special ids are not the built-in tokenizer's (pad 0, BOS 1, EOS 2)
//! trains and evaluates: CLIP and Cap checkpoints carry its ids in `config.json`, `cappa eval`
//! runs on them, and a checkpoint whose `tokenizer.json` is swapped for another is refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

/// The ids of the tokenizer the runs here train with: none where the built-in has them.
const PAD: u32 = 258;
const BOS: u32 = 100;
const EOS: u32 = 5;
/// The 256 byte-level symbols and the three specials.
const VOCAB_SIZE: u32 = 259;

/// Writes a character-level (byte-level BPE without merges, so that every caption encodes)
/// `tokenizer.json` with `<pad>`, `<s>` and `</s>` at the given ids.
fn write_tokenizer(path: &Path, pad: u32, bos: u32, eos: u32) {
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    let specials = [("<pad>", pad), ("<s>", bos), ("</s>", eos)];
    let mut free_ids = (0..VOCAB_SIZE).filter(|id| specials.iter().all(|(_, s)| s != id));
    let mut vocab: Vocab = alphabet
        .iter()
        .map(|symbol| (symbol.to_string(), free_ids.next().expect("259 ids")))
        .collect();
    vocab.extend(specials.iter().map(|(name, id)| (name.to_string(), *id)));
    assert_eq!(vocab.len(), VOCAB_SIZE as usize);
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, Vec::new())
        .build()
        .unwrap();
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::default()));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let added: Vec<AddedToken> = specials
        .iter()
        .map(|(name, _)| AddedToken::from(*name, true))
        .collect();
    tokenizer.add_special_tokens(&added);
    tokenizer.save(path, true).unwrap();
}

fn cappa(args: &[&str], paths: &[&Path]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cappa"));
    command.args(["--threads", "1"]).args(args);
    for path in paths {
        command.arg(path);
    }
    command
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("cappa starts")
}

fn succeeded(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Trains `objective` for four steps with the tokenizer at `tokenizer`; returns the checkpoint.
fn train(run: &Path, objective: &str, tokenizer: &Path) -> PathBuf {
    let sets = [
        format!("objective={objective}"),
        format!("data.tokenizer={}", tokenizer.display()),
        "data.seq_len=32".into(),
        "budget.steps=4".into(),
        "batch_size=8".into(),
        "data.scene.image_size=32".into(),
        "data.threads=1".into(),
        "schedule.warmup_steps=1".into(),
    ];
    let mut args = vec!["train", "--progress", "quiet"];
    for set in &sets {
        args.extend(["--set", set]);
    }
    args.push("--out");
    succeeded(cappa(&args, &[run]), "cappa train");
    run.join("checkpoints/step-00000004")
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn evaluate(checkpoint: &Path) -> Output {
    let out = checkpoint.join("eval");
    cappa(
        &["eval", "--test", "16", "--pool", "32", "--out"],
        &[&out, checkpoint],
    )
}

/// Trains `objective`, checks the ids in the checkpoint's config.json (`tower` is `text` or
/// `decoder`) and evaluates it; returns the checkpoint.
fn train_and_evaluate(dir: &Path, objective: &str, tower: &str) -> PathBuf {
    let tokenizer = dir.join("unusual.json");
    write_tokenizer(&tokenizer, PAD, BOS, EOS);
    let checkpoint = train(&dir.join(objective), objective, &tokenizer);
    let config = json(&checkpoint.join("config.json"));
    let ids = &config[tower];
    assert_eq!(ids["vocab_size"], VOCAB_SIZE, "{config}");
    assert_eq!(ids["pad_id"], PAD, "{config}");
    assert_eq!(ids["eos_id"], EOS, "{config}");
    if tower == "decoder" {
        assert_eq!(
            ids["bos_id"], PAD,
            "the decoder starts from the pad id: {config}"
        );
    }
    // The checkpoint keeps the tokenizer it was trained with.
    let kept = json(&checkpoint.join("tokenizer.json"));
    assert_eq!(kept["model"]["vocab"]["</s>"], EOS);
    succeeded(evaluate(&checkpoint), "cappa eval");
    let results = json(&checkpoint.join("eval/results.json"));
    assert_eq!(results["test_images"], 16, "{results}");
    checkpoint
}

#[test]
fn clip_trains_and_evaluates_with_the_tokenizers_ids() {
    let dir = tempfile::tempdir().unwrap();
    train_and_evaluate(dir.path(), "clip", "text");
}

#[test]
fn cap_trains_and_evaluates_with_the_tokenizers_ids() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = train_and_evaluate(dir.path(), "cap", "decoder");
    let results = json(&checkpoint.join("eval/results.json"));
    assert_eq!(results["captioning_greedy"]["images"], 16, "{results}");
}

/// `cappa eval` refuses it through `cappa::checkpoint_eval::LoadedCheckpoint::load`, which
/// calls `cappa_trainer::tokens::check_tokenizer`.
#[test]
fn a_checkpoint_with_a_swapped_tokenizer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = dir.path().join("unusual.json");
    write_tokenizer(&tokenizer, PAD, BOS, EOS);
    let checkpoint = train(&dir.path().join("clip"), "clip", &tokenizer);
    // The same vocabulary with EOS and BOS exchanged, recorded in the checkpoint's manifest:
    // every file is intact, the files disagree (a tokenizer.json from another run).
    write_tokenizer(&checkpoint.join("tokenizer.json"), PAD, EOS, BOS);
    let manifest = json(&checkpoint.join(cappa_models::checkpoint::MANIFEST_FILE));
    let names: Vec<&str> = manifest["files"]
        .as_object()
        .expect("the manifest lists files")
        .keys()
        .map(String::as_str)
        .collect();
    assert!(names.contains(&"tokenizer.json"), "{manifest}");
    cappa_models::checkpoint::write_manifest(&checkpoint, &names).unwrap();
    let config = cappa_models::checkpoint::load_config(&checkpoint).unwrap();
    let swapped =
        cappa_data::tokenizer::Tokenizer::load(checkpoint.join("tokenizer.json")).unwrap();
    let error = cappa_trainer::tokens::check_tokenizer(
        &config,
        &checkpoint.join("config.json"),
        &swapped,
        &checkpoint.join("tokenizer.json"),
    )
    .unwrap_err();
    assert_eq!(
        (error.field, error.config_value, error.tokenizer_value),
        ("text.eos_id", 5, 100)
    );

    let out = evaluate(&checkpoint);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "cappa eval accepted a swapped tokenizer"
    );
    for part in [
        "config.json",
        "tokenizer.json",
        "text.eos_id = 5",
        "EOS id 100",
    ] {
        assert!(stderr.contains(part), "{part} missing from: {stderr}");
    }
    assert!(!checkpoint.join("eval/results.json").exists());
}
