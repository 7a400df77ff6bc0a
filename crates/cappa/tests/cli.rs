//! The `cappa` binary end to end: it starts without LD_LIBRARY_PATH (rpath to libtorch) and
//! `info --json` is valid JSON with the documented fields.

use std::process::Command;

fn cappa(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cappa"))
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("the cappa binary starts")
}

#[test]
fn info_json_parses_and_names_the_versions() {
    let out = cappa(&["--threads", "1", "info", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(info["tch_version"], "0.24.0");
    assert!(info["libtorch_version"]
        .as_str()
        .unwrap()
        .starts_with("2.11.0"));
    assert_eq!(info["cpu_threads"], 1);
    for key in ["cuda_available", "cudnn_available", "bf16"] {
        assert!(info[key].is_boolean(), "{key} missing in {info}");
    }
    assert!(info["cuda_devices"].is_array());
    assert!(["cpu", "cuda:0"].contains(&info["auto_device"].as_str().unwrap()));
}

#[test]
fn info_text_lists_every_fact() {
    let out = cappa(&["info"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for label in [
        "tch ",
        "libtorch ",
        "cpu ",
        "cuda",
        "cudnn ",
        "auto ",
        "bf16 ",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(label)),
            "no '{label}' line in:\n{text}"
        );
    }
}

#[test]
fn an_unavailable_device_is_refused_with_advice() {
    let out = cappa(&["--device", "cuda:99", "info"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cuda:99"), "{stderr}");
}

#[test]
fn export_writes_an_open_clip_directory_and_refuses_what_open_clip_cannot_load() {
    use cappa_models::checkpoint::{self, ModelConfig};
    use cappa_models::{CapConfig, ClipConfig, Pooling};
    use tch::nn::VarStore;

    let dir = tempfile::tempdir().unwrap();
    let mut exportable = ClipConfig::tiny();
    exportable.vision.class_token = true;
    exportable.vision.ln_pre = true;
    exportable.vision.pooling = Pooling::Cls;
    for (name, config) in [
        ("clip", ModelConfig::Clip(exportable)),
        ("gap-no-cls", ModelConfig::Clip(ClipConfig::tiny())),
        ("cap", ModelConfig::Cap(CapConfig::tiny())),
    ] {
        let vs = VarStore::new(tch::Device::Cpu);
        let _model = config.build(&vs);
        checkpoint::save(&vs, &config, &dir.path().join(name)).unwrap();
    }
    let out = dir.path().join("exported");
    let run = |name: &str| {
        let ckpt = dir.path().join(name);
        cappa(&[
            "export",
            "--format",
            "open_clip",
            ckpt.to_str().unwrap(),
            out.to_str().unwrap(),
        ])
    };
    let ok = run("clip");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("open_clip_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["model_cfg"]["vision_cfg"]["pool_type"], "tok");
    assert_eq!(config["model_cfg"]["vision_cfg"]["head_width"], 16);
    assert_eq!(config["model_cfg"]["text_cfg"]["pool_type"], "eos");
    assert_eq!(config["model_cfg"]["embed_dim"], 64);
    let weights = tch::Tensor::read_safetensors(out.join("open_clip_model.safetensors")).unwrap();
    assert!(weights
        .iter()
        .any(|(name, _)| name == "visual.class_embedding"));
    assert!(weights.iter().any(|(name, _)| name == "text_projection"));

    for (name, reason) in [("gap-no-cls", "class token"), ("cap", "CLIP models only")] {
        let refused = run(name);
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains(reason), "{name}: {stderr}");
    }
}

#[test]
fn synth_writes_shards_that_data_inspect_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("world");
    let synth = cappa(&[
        "--seed",
        "3",
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--samples",
        "12",
        "--eval-samples",
        "4",
        "--shard-size",
        "5",
        "--image-size",
        "32",
    ]);
    assert!(
        synth.status.success(),
        "{}",
        String::from_utf8_lossy(&synth.stderr)
    );
    let pattern = format!("{}/shards/{{00000..00002}}.tar", out.display());
    let inspect = cappa(&["data", "inspect", &pattern, "--json"]);
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(report["format"], "web_dataset");
    assert_eq!(report["samples"], 12);
    assert_eq!(report["image_width"]["max"], 32.0);
    let karpathy = out.join("eval/karpathy.json");
    let text = cappa(&["data", "inspect", karpathy.to_str().unwrap()]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("Karpathy") && text.contains("good samples       4"),
        "{text}"
    );

    let missing = cappa(&["data", "inspect", "/nonexistent/{0..3}.tar"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/"));
}
