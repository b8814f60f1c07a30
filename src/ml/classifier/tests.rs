//! Tests of the classifier: masked losses, AdamW against hand-computed steps, weight blobs.
use super::*;
use crate::ml::adamw::AdamW;

fn spec(task: TaskType, labels: usize) -> ClassifierSpec {
    ClassifierSpec {
        mode: TrainMode::Head,
        task,
        labels: (0..labels).map(|i| format!("l{i}")).collect(),
        input_dim: 4,
        hidden_size: 3,
        dropout: 0.0,
        max_tokens: 16,
        pooling: Default::default(),
        base_model: None,
    }
}

#[test]
fn masked_cells_do_not_change_the_loss() {
    let loss = LossSpec {
        kind: LossKind::Bce,
        focal_gamma: 2.0,
        gamma_neg: 4.0,
        gamma_pos: 1.0,
        clip: 0.05,
    };
    let logits = Tensor::from_slice(&[0.3f32, -1.0, 2.0, 0.5]).view([2, 2]);
    let targets = Tensor::from_slice(&[1f32, 0., 0., 1.]).view([2, 2]);
    let mask = Tensor::from_slice(&[1f32, 0., 1., 1.]).view([2, 2]);
    let a =
        masked_loss(TaskType::MultiLabel, &logits, &targets, &mask, &loss, None).double_value(&[]);
    // Change the masked cell's logit and target: the loss must not move.
    let logits2 = Tensor::from_slice(&[0.3f32, 9.0, 2.0, 0.5]).view([2, 2]);
    let targets2 = Tensor::from_slice(&[1f32, 1., 0., 1.]).view([2, 2]);
    let b = masked_loss(
        TaskType::MultiLabel,
        &logits2,
        &targets2,
        &mask,
        &loss,
        None,
    )
    .double_value(&[]);
    assert!((a - b).abs() < 1e-7, "{a} vs {b}");
    // Reference: mean of BCE over the three annotated cells.
    let bce = |x: f64, t: f64| {
        -(t * (1.0 / (1.0 + (-x).exp())).ln() + (1.0 - t) * (1.0 - 1.0 / (1.0 + (-x).exp())).ln())
    };
    let expected = (bce(0.3, 1.0) + bce(2.0, 0.0) + bce(0.5, 1.0)) / 3.0;
    assert!((a - expected).abs() < 1e-6, "{a} vs {expected}");
}

#[test]
fn adamw_matches_pytorch() {
    // Reference: torch.optim.AdamW(lr=0.1, betas=(0.9, 0.999), eps=1e-8), weight decay 0.01
    // on the weight and 0 on the bias, three steps with these gradients (torch 2.11).
    let w = Tensor::from_slice(&[0.5f32, -1.0, 2.0]).set_requires_grad(true);
    let b = Tensor::from_slice(&[0.1f32, 0.2]).set_requires_grad(true);
    let params = vec![
        ("classifier.out.weight".to_string(), w.shallow_clone()),
        ("classifier.out.bias".to_string(), b.shallow_clone()),
    ];
    let mut opt = AdamW::new(params, 0.01, |_| 0);
    let steps: [([f32; 3], [f32; 2]); 3] = [
        ([0.3, -0.2, 0.05], [1.0, -1.0]),
        ([0.1, 0.4, -0.3], [0.5, 0.5]),
        ([-0.2, 0.1, 0.0], [0.0, 2.0]),
    ];
    for (gw, gb) in steps {
        opt.zero_grad();
        let loss = (&w * Tensor::from_slice(&gw)).sum(Kind::Float)
            + (&b * Tensor::from_slice(&gb)).sum(Kind::Float);
        loss.backward();
        opt.step(&[0.1]);
    }
    let got_w = Vec::<f32>::try_from(w.detach()).unwrap();
    let got_b = Vec::<f32>::try_from(b.detach()).unwrap();
    let want_w = [0.288_959_62f32, -0.975_341_74, 2.004_764_6];
    let want_b = [-0.165_275_7_f32, 0.280_900_5];
    for (g, w) in got_w.iter().chain(&got_b).zip(want_w.iter().chain(&want_b)) {
        assert!((g - w).abs() < 1e-6, "{got_w:?} {got_b:?}");
    }
}

#[test]
fn blobs_round_trip_and_adamw_state_restores() {
    tch::manual_seed(1);
    let a = Classifier::new(spec(TaskType::MultiLabel, 2), Device::Cpu, None).unwrap();
    let blob = a.weights_blob().unwrap();
    tch::manual_seed(2);
    let mut b = Classifier::new(spec(TaskType::MultiLabel, 2), Device::Cpu, None).unwrap();
    b.load_weights_blob(&blob).unwrap();
    let x = Tensor::from_slice(&[0.1f32, 0.2, 0.3, 0.4]).view([1, 4]);
    let ya = a.logits(ClassifierInput::Embeddings(&x), None);
    let yb = b.logits(ClassifierInput::Embeddings(&x), None);
    assert_eq!(
        Vec::<f32>::try_from(ya.view([-1])).unwrap(),
        Vec::<f32>::try_from(yb.view([-1])).unwrap()
    );

    let mut opt = AdamW::new(a.trainable(), 0.01, |_| 0);
    let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    let loss = a
        .logits(ClassifierInput::Embeddings(&x), Some(&mut rng))
        .sum(Kind::Float);
    loss.backward();
    opt.step(&[0.01]);
    let state = tensors_to_blob(&opt.state()).unwrap();
    let mut opt2 = AdamW::new(b.trainable(), 0.01, |_| 0);
    opt2.restore(&blob_to_tensors(&state, Device::Cpu).unwrap())
        .unwrap();
    assert_eq!(opt2.step, 1);
}
