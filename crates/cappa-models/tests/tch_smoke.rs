//! The bindings, the libtorch build and the rpath work together: a small forward and backward
//! pass checked against gradients worked out by hand.
//!
//! loss = Σ (W·x + b)², so ∂loss/∂b = 2y, ∂loss/∂W = 2y·xᵀ, ∂loss/∂x = 2Wᵀ·y with y = W·x + b.
//! With W = [[1, 2, 3], [-1, 0, 1]], x = [1, -1, 2], b = [0.5, -0.5]:
//! y = [5.5, 0.5], loss = 30.5, ∂b = [11, 1], ∂W = [[11, -11, 22], [1, -1, 2]], ∂x = [10, 22, 34].

use tch::{Device, Kind, Tensor};

fn leaf(values: &[f64], shape: &[i64], device: Device) -> Tensor {
    Tensor::from_slice(values)
        .reshape(shape)
        .to_device(device)
        .set_requires_grad(true)
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_device(Device::Cpu).flatten(0, -1)).expect("f64 tensor")
}

fn check_linear_square_gradients(device: Device) {
    let w = leaf(&[1.0, 2.0, 3.0, -1.0, 0.0, 1.0], &[2, 3], device);
    let x = leaf(&[1.0, -1.0, 2.0], &[3], device);
    let b = leaf(&[0.5, -0.5], &[2], device);

    let y = w.mv(&x) + &b;
    let loss = y.square().sum(Kind::Double);
    loss.backward();

    assert_eq!(values(&y), [5.5, 0.5]);
    assert_eq!(loss.double_value(&[]), 30.5);
    assert_eq!(values(&b.grad()), [11.0, 1.0]);
    assert_eq!(values(&w.grad()), [11.0, -11.0, 22.0, 1.0, -1.0, 2.0]);
    assert_eq!(values(&x.grad()), [10.0, 22.0, 34.0]);
}

#[test]
fn forward_and_backward_on_cpu_match_hand_computed_gradients() {
    check_linear_square_gradients(Device::Cpu);
}

/// Run on a CUDA machine with `cargo test -p cappa-models --test tch_smoke -- --ignored`.
#[test]
#[ignore = "needs a CUDA device"]
fn forward_and_backward_on_cuda_match_hand_computed_gradients() {
    assert!(
        tch::Cuda::is_available(),
        "no CUDA device is visible to libtorch (tch::Cuda::is_available() is false)"
    );
    for index in 0..tch::Cuda::device_count() {
        check_linear_square_gradients(Device::Cuda(index as usize));
    }
}

#[test]
fn gradients_accumulate_across_backward_calls_until_zeroed() {
    // A second backward adds to the stored gradient; zeroing restores a single pass's value.
    let w = leaf(&[1.0, 2.0, 3.0, -1.0, 0.0, 1.0], &[2, 3], Device::Cpu);
    let x = Tensor::from_slice(&[1.0f64, -1.0, 2.0]);
    let b = Tensor::from_slice(&[0.5f64, -0.5]);
    for _ in 0..2 {
        (w.mv(&x) + &b).square().sum(Kind::Double).backward();
    }
    assert_eq!(values(&w.grad()), [22.0, -22.0, 44.0, 2.0, -2.0, 4.0]);
    let mut grad = w.grad();
    let _ = grad.zero_();
    (w.mv(&x) + &b).square().sum(Kind::Double).backward();
    assert_eq!(values(&w.grad()), [11.0, -11.0, 22.0, 1.0, -1.0, 2.0]);
}
