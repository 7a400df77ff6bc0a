//! Two real processes with Gloo over a TCPStore on 127.0.0.1: the test binary starts itself
//! twice, running the ignored `rank_process` test as rank 0 and rank 1.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cappa_torch_ext::autocast::Autocast;
use cappa_torch_ext::dist::{Backend, DistEnv, DistError, ProcessGroup, ReduceOp};
use tch::{Device, Kind, Tensor};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

fn spawn_ranks(scenario: &str, world_size: usize) -> Vec<Child> {
    let port = free_port();
    let exe = std::env::current_exe().expect("test binary path");
    (0..world_size)
        .map(|rank| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "rank_process",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("CAPPA_TEST_SCENARIO", scenario)
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", world_size.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start a rank")
        })
        .collect()
}

fn finish(child: Child) -> (bool, String) {
    let out = child.wait_with_output().expect("rank output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn two_ranks_reduce_gather_and_broadcast() {
    for (rank, child) in spawn_ranks("values", 2).into_iter().enumerate() {
        let (ok, text) = finish(child);
        assert!(ok, "rank {rank} failed:\n{text}");
        assert!(text.contains("collectives ok"), "rank {rank}:\n{text}");
    }
}

#[test]
fn a_dead_rank_is_an_error_not_a_hang() {
    let started = Instant::now();
    let mut children = spawn_ranks("die", 2).into_iter();
    let (survivor, dead) = (children.next().unwrap(), children.next().unwrap());
    let (dead_ok, dead_text) = finish(dead);
    assert!(!dead_ok, "rank 1 was meant to die:\n{dead_text}");
    let (ok, text) = finish(survivor);
    // The survivor's test asserts that its collective returned a DistError naming the op.
    assert!(
        ok,
        "rank 0 did not report the dead peer as an error:\n{text}"
    );
    assert!(text.contains("peer failure reported"), "rank 0:\n{text}");
    // Well inside the 60 s collective timeout: a closed connection is noticed at once.
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "took {:?}",
        started.elapsed()
    );
}

/// One rank of the scenarios above (run only by them, in their own processes).
#[test]
#[ignore = "a rank process started by the two-process tests"]
fn rank_process() {
    let scenario = std::env::var("CAPPA_TEST_SCENARIO").expect("started by a two-process test");
    let pg = ProcessGroup::from_env(Backend::Gloo, Duration::from_secs(60))
        .expect("rendezvous")
        .expect("WORLD_SIZE is set");
    let (rank, world) = (pg.rank(), pg.world_size());
    assert_eq!(world, 2);
    match scenario.as_str() {
        "values" => {
            // all_reduce: sum, average and max of [r + 1, 10 (r + 1)].
            let base = Tensor::from_slice(&[rank as f32 + 1.0, 10.0 * (rank as f32 + 1.0)]);
            let mut sum = base.copy();
            pg.all_reduce(&mut sum, ReduceOp::Sum).unwrap();
            assert_eq!(Vec::<f32>::try_from(&sum).unwrap(), [3.0, 30.0]);
            let mut avg = base.copy();
            pg.all_reduce(&mut avg, ReduceOp::Avg).unwrap();
            assert_eq!(Vec::<f32>::try_from(&avg).unwrap(), [1.5, 15.0]);
            let mut max = base.copy();
            pg.all_reduce(&mut max, ReduceOp::Max).unwrap();
            assert_eq!(Vec::<f32>::try_from(&max).unwrap(), [2.0, 20.0]);
            // Buckets of 3 over 7 elements: three collectives, the same sums.
            let mut flat = Tensor::arange(7, (Kind::Float, Device::Cpu)) * (rank as f64 + 1.0);
            pg.all_reduce_buckets(&mut flat, ReduceOp::Sum, 3).unwrap();
            let expected: Vec<f32> = (0..7).map(|i| 3.0 * i as f32).collect();
            assert_eq!(Vec::<f32>::try_from(&flat).unwrap(), expected);
            // all_gather: (world, 2, 2) in rank order.
            let local = Tensor::from_slice(&[rank as i64; 4]).view([2, 2]);
            let gathered = pg.all_gather(&local).unwrap();
            assert_eq!(gathered.size(), [2, 2, 2]);
            assert_eq!(
                Vec::<i64>::try_from(&gathered.flatten(0, -1)).unwrap(),
                [0, 0, 0, 0, 1, 1, 1, 1]
            );
            // broadcast from rank 1.
            let mut b = Tensor::from_slice(&[rank as f64 * 7.0, -1.0]);
            pg.broadcast(&mut b, 1).unwrap();
            assert_eq!(Vec::<f64>::try_from(&b).unwrap(), [7.0, -1.0]);
            // Gathered rows keep the gradient of this rank's rows only.
            let x = Tensor::from_slice(&[rank as f32 + 1.0, 2.0])
                .view([1, 2])
                .set_requires_grad(true);
            let rows = pg.gather_rows_with_local_grad(&x).unwrap();
            assert_eq!(rows.size(), [2, 2]);
            (rows.sum(Kind::Float) * (rank as f64 + 1.0)).backward();
            assert_eq!(
                Vec::<f32>::try_from(&x.grad().flatten(0, -1)).unwrap(),
                [rank as f32 + 1.0; 2]
            );
            pg.barrier().unwrap();
            println!("rank {rank}: collectives ok");
        }
        "die" => {
            let mut t = Tensor::from_slice(&[1.0f32]);
            pg.all_reduce(&mut t, ReduceOp::Sum).unwrap();
            if rank == 1 {
                std::process::exit(3);
            }
            // Give rank 1 time to exit, then talk to it.
            std::thread::sleep(Duration::from_millis(500));
            let mut result = Ok(());
            for _ in 0..5 {
                result = pg.all_reduce(&mut t, ReduceOp::Sum);
                if result.is_err() {
                    break;
                }
            }
            match result {
                Err(DistError::Collective { op, message, .. }) => {
                    assert_eq!(op, "all_reduce");
                    println!("rank 0: peer failure reported: {message}");
                }
                other => panic!("expected a collective error, got {other:?}"),
            }
        }
        other => panic!("unknown scenario {other}"),
    }
}

#[test]
fn the_environment_is_read_like_torchrun() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    };
    assert_eq!(DistEnv::from_lookup(env(&[])).unwrap(), None);
    let full = DistEnv::from_lookup(env(&[
        ("WORLD_SIZE", "4"),
        ("RANK", "3"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "node0"),
        ("MASTER_PORT", "29500"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(
        full,
        DistEnv {
            rank: 3,
            world_size: 4,
            local_rank: 1,
            master_addr: "node0".into(),
            master_port: 29500,
            agent_store: false,
        }
    );
    let torchrun = DistEnv::from_lookup(env(&[
        ("WORLD_SIZE", "2"),
        ("RANK", "0"),
        ("MASTER_PORT", "29500"),
        ("TORCHELASTIC_USE_AGENT_STORE", "True"),
    ]))
    .unwrap()
    .unwrap();
    assert!(torchrun.agent_store);
    assert_eq!(
        (torchrun.local_rank, torchrun.master_addr.as_str()),
        (0, "127.0.0.1")
    );
    let missing = DistEnv::from_lookup(env(&[("WORLD_SIZE", "2"), ("MASTER_PORT", "1")]));
    assert!(matches!(missing, Err(DistError::Env { name: "RANK", .. })));
    let bad = DistEnv::from_lookup(env(&[
        ("WORLD_SIZE", "2"),
        ("RANK", "2"),
        ("MASTER_PORT", "1"),
    ]));
    assert!(matches!(bad, Err(DistError::Env { name: "RANK", .. })));
    let port = DistEnv::from_lookup(env(&[
        ("WORLD_SIZE", "2"),
        ("RANK", "0"),
        ("MASTER_PORT", "x"),
    ]));
    assert!(matches!(
        port,
        Err(DistError::Env {
            name: "MASTER_PORT",
            ..
        })
    ));
}

#[test]
fn bf16_autocast_on_cpu_and_restored_after() {
    let a = Tensor::ones([8, 8], (Kind::Float, Device::Cpu)) * 0.5;
    let inside = Autocast::bf16(Device::Cpu, || {
        // Nested guards keep autocast on until the outermost ends.
        let nested = Autocast::bf16(Device::Cpu, || a.matmul(&a)).unwrap();
        (nested, a.matmul(&a))
    })
    .unwrap();
    assert_eq!(inside.0.kind(), Kind::BFloat16);
    let off = Autocast::bf16(Device::Cpu, || {
        let _fp32 = Autocast::off(Device::Cpu).unwrap();
        a.matmul(&a)
    })
    .unwrap();
    assert_eq!(
        off.kind(),
        Kind::Float,
        "an off guard inside autocast computes in fp32"
    );
    assert_eq!(inside.1.kind(), Kind::BFloat16);
    assert_eq!(inside.1.double_value(&[0, 0]), 2.0);
    assert_eq!(
        a.matmul(&a).kind(),
        Kind::Float,
        "autocast must be off after the guard"
    );
}

#[test]
fn a_refused_kernel_call_returns_libtorchs_message() {
    use cappa_torch_ext::optim::{fused_adamw_, AdamWStep};
    let h = AdamWStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        weight_decay: 0.0,
        eps: 1e-8,
    };
    let step = Tensor::ones([1], (Kind::Float, Device::Cpu));
    // An integer parameter: libtorch's C++ exception comes back as a typed error, not an abort.
    let integers = Tensor::zeros([4], (Kind::Int64, Device::Cpu));
    let error = fused_adamw_(&integers, &integers, &integers, &integers, &step, h).unwrap_err();
    assert!(error.source.message.contains("'Long'"), "{error}");
    assert!(
        error
            .to_string()
            .starts_with("libtorch's fused AdamW kernel failed: "),
        "{error}"
    );
    // A float gradient with Double moments is refused naming both types.
    let param = Tensor::zeros([4], (Kind::Float, Device::Cpu));
    let doubles = Tensor::zeros([4], (Kind::Double, Device::Cpu));
    let error = fused_adamw_(&param, &param, &doubles, &doubles, &step, h).unwrap_err();
    assert_eq!(
        error.source.message,
        "expected scalar type Float but found Double"
    );
    let zeros = param.zeros_like();
    assert!(fused_adamw_(&param, &zeros, &zeros, &zeros, &step, h).is_ok());
}

#[test]
fn the_tf32_switch_sets_both_flags() {
    use cappa_torch_ext::backends::{set_tf32, tf32};
    set_tf32(true);
    assert!(tf32());
    set_tf32(false);
    assert!(!tf32());
}
