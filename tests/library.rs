//! The library API as an app uses it: every way an image can go in gives PyTorch's logits
//! (tests/fixtures/golden_tiny.json, from tools/reference/golden.py), batches of any size on any
//! call, label changes, and typed errors for bad input.

mod common;
use common::*;
use maple::{Classification, Classifier, Device, Error, ImageSource};
use serde_json::Value;

const TOL: f32 = 1e-3;

fn classifier() -> Classifier {
    let dir = tiny_dir();
    Classifier::builder(&dir)
        .prompts(dir.join("maple_prompts.safetensors"))
        .label_set(maple::read_labels(fixtures().join("labels.txt")).unwrap())
        .device(Device::Cpu)
        .batch_size(2)
        .build()
        .unwrap()
}

/// The golden MaPLe logits of fixture image `name`.
fn want(g: &Value, name: &str) -> Vec<f32> {
    let i = g["images"]
        .as_array()
        .unwrap()
        .iter()
        .position(|v| v.as_str() == Some(name))
        .unwrap();
    g["maple"]["logits"][i]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

fn assert_close(got: &Classification, want: &[f32], what: &str) {
    assert_eq!(got.logits.len(), want.len(), "{what}: label count");
    for (j, (a, b)) in got.logits.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= TOL, "{what}: label {j}: {a} vs {b}");
    }
}

fn image(name: &str) -> std::path::PathBuf {
    fixtures().join("images").join(name)
}

#[test]
fn a_later_call_may_hold_more_images_than_the_first() {
    // Issue 11: `classify(&[a])` then `classify(&[a, b])` failed with "2 images for a workspace
    // of 1". Batch size 2 makes the third call span two forward passes.
    let g = golden("golden_tiny.json");
    let mut c = classifier();
    let names = ["photo_320x240.jpg", "rgb_100x80.png", "gray_300x451.png"];
    let paths: Vec<_> = names.iter().map(|n| image(n)).collect();
    for n in [1, 2, 3, 1] {
        let sources: Vec<_> = paths[..n].iter().map(|p| ImageSource::Path(p)).collect();
        let results = c.classify_batch(&sources).unwrap();
        assert_eq!(results.len(), n);
        for (r, name) in results.iter().zip(names) {
            assert_close(r.as_ref().unwrap(), &want(&g, name), name);
        }
    }
}

#[test]
fn bytes_pixels_and_paths_give_the_same_logits_as_pytorch() {
    let g = golden("golden_tiny.json");
    let mut c = classifier();
    let jpg = image("photo_320x240.jpg");
    let w = want(&g, "photo_320x240.jpg");
    assert_close(&c.classify_path(&jpg).unwrap(), &w, "path");
    let bytes = std::fs::read(&jpg).unwrap();
    assert_close(&c.classify_bytes(&bytes).unwrap(), &w, "bytes");
    let px = maple::imageio::decode_rgb8(&bytes).unwrap();
    assert_close(
        &c.classify_rgb8(&px.data, px.width, px.height).unwrap(),
        &w,
        "rgb8",
    );

    // RGBA pixels from the image crate; PyTorch's side dropped alpha with Pillow's convert("RGB").
    let png = image("rgba_256x256.png");
    let rgba = ::image::open(&png).unwrap().to_rgba8();
    assert!(rgba.pixels().any(|p| p[3] != 255), "fixture has no alpha");
    let (wd, ht) = (rgba.width() as usize, rgba.height() as usize);
    let r = c.classify_rgba8(rgba.as_raw(), wd, ht).unwrap();
    assert_close(&r, &want(&g, "rgba_256x256.png"), "rgba8");

    // All four kinds in one batch, with a bad one in the middle that fails alone.
    let sources = [
        ImageSource::Rgba8 {
            data: rgba.as_raw(),
            width: wd,
            height: ht,
        },
        ImageSource::Bytes(b"not an image"),
        ImageSource::Bytes(&bytes),
        ImageSource::Rgb8 {
            data: &px.data,
            width: px.width,
            height: px.height,
        },
        ImageSource::Path(&jpg),
    ];
    let results = c.classify_batch(&sources).unwrap();
    assert_eq!(results.len(), 5);
    assert_close(
        results[0].as_ref().unwrap(),
        &want(&g, "rgba_256x256.png"),
        "batch rgba",
    );
    match &results[1] {
        Err(e @ Error::Image { image, .. }) => {
            assert_eq!(image, "<bytes>");
            assert!(e.to_string().starts_with("<bytes>: not an image"), "{e}");
        }
        other => panic!("expected an image error, got {other:?}"),
    }
    for r in &results[2..] {
        assert_close(r.as_ref().unwrap(), &w, "batch");
    }
}

#[test]
fn scores_top_and_best_follow_the_logits() {
    let g = golden("golden_tiny.json");
    let mut c = classifier();
    let r = c.classify_path(image("rgb_451x300.png")).unwrap();
    let w = want(&g, "rgb_451x300.png");
    let gold_top: Vec<usize> = g["maple"]["top5"][g["images"]
        .as_array()
        .unwrap()
        .iter()
        .position(|v| v == "rgb_451x300.png")
        .unwrap()]
    .as_array()
    .unwrap()
    .iter()
    .map(|v| v.as_u64().unwrap() as usize)
    .collect();
    let top = r.top(5);
    assert_eq!(top.iter().map(|s| s.index).collect::<Vec<_>>(), gold_top);
    assert_eq!(r.best().index, gold_top[0]);
    let labels = g["labels"].as_array().unwrap();
    for s in &top {
        assert_eq!(s.label, labels[s.index].as_str().unwrap());
        assert!((s.logit - w[s.index]).abs() <= TOL);
    }
    // Softmax computed here from the golden logits.
    let m = w.iter().cloned().fold(f32::MIN, f32::max);
    let z: f32 = w.iter().map(|x| (x - m).exp()).sum();
    for s in r.scores() {
        let p = (w[s.index] - m).exp() / z;
        assert!((s.prob - p).abs() < 1e-4, "prob {} vs {p}", s.prob);
    }
    assert_eq!(r.top(100).len(), labels.len());
    assert!(r.top(0).is_empty());
}

#[test]
fn set_labels_reruns_the_text_tower_only() {
    // A label's logit depends on that label alone, so a subset in a new order must give the
    // golden file's columns for those labels.
    let g = golden("golden_tiny.json");
    let mut c = classifier();
    c.set_labels(["Eiffel Tower", "cat", "sea anemone"])
        .unwrap();
    let r = c.classify_path(image("photo_320x240.jpg")).unwrap();
    let w = want(&g, "photo_320x240.jpg");
    assert_close(&r, &[w[7], w[0], w[8]], "subset");
    assert_eq!(r.labels()[2].text, "sea anemone");

    // A rejected label set leaves the old one in place.
    let err = c.set_labels(Vec::<String>::new()).unwrap_err();
    assert!(matches!(err, Error::Text(_)), "{err:?}");
    assert_eq!(c.labels().len(), 3);
    let too_long = "word ".repeat(100);
    let err = c.set_labels(["cat", too_long.as_str()]).unwrap_err();
    assert!(err.to_string().contains("too long"), "{err}");
    assert_eq!(c.labels()[0].text, "Eiffel Tower");
}

#[test]
fn bad_input_is_a_typed_error_not_a_panic() {
    let dir = tiny_dir();
    let err = Classifier::builder(dir.join("no-such-model"))
        .labels(["cat"])
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("no-such-model"), "{err}");

    let err = Classifier::builder(&dir)
        .prompts(dir.join("missing_prompts.safetensors"))
        .labels(["cat"])
        .device(Device::Cpu)
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(std::error::Error::source(&err).is_some());

    let err = Classifier::builder(&dir)
        .device(Device::Cpu)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("label"), "{err}");

    let mut c = classifier();
    let err = c.classify_rgb8(&[0; 10], 2, 2).unwrap_err();
    assert!(matches!(err, Error::Image { .. }), "{err:?}");
    assert!(err.to_string().starts_with("<pixels>: "), "{err}");
    let err = c.classify_rgba8(&[], 0, 0).unwrap_err();
    assert!(matches!(err, Error::Image { .. }), "{err:?}");
    let err = c.classify_bytes(&[]).unwrap_err();
    assert_eq!(err.to_string(), "<bytes>: empty file, not an image");
    let missing = image("missing.png");
    let err = c.classify_path(&missing).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}: no such file or directory", missing.display())
    );
    assert!(c.classify_batch(&[]).unwrap().is_empty());
}

#[test]
fn the_classifier_can_move_to_a_worker_thread() {
    fn is_send<T: Send>() {}
    is_send::<Classifier>();
    let g = golden("golden_tiny.json");
    let mut c = classifier();
    let r = std::thread::spawn(move || c.classify_path(image("rgb_100x80.png")).unwrap())
        .join()
        .unwrap();
    assert_close(&r, &want(&g, "rgb_100x80.png"), "thread");
}

#[test]
fn embeddings_are_unit_rows_whose_scaled_products_are_pytorchs_logits() {
    let g = golden("golden_tiny.json");
    let mut c = classifier();
    let (a, b) = ("photo_320x240.jpg", "rgb_100x80.png");
    let (pa, pb) = (image(a), image(b));
    let rows = c
        .embed_images(&[
            ImageSource::Path(&pa),
            ImageSource::Bytes(b"not an image"),
            ImageSource::Path(&pb),
        ])
        .unwrap();
    assert_eq!(rows.len(), 3);
    assert!(matches!(rows[1], Err(Error::Image { .. })), "{:?}", rows[1]);
    let texts: Vec<String> = c.labels().iter().map(|l| l.text.clone()).collect();
    let t = c.embed_texts(&texts).unwrap();
    let e = c.embedding_dim();
    assert_eq!(t.len(), texts.len());
    let scale = c.logit_scale();
    for (name, row) in [(a, &rows[0]), (b, &rows[2])] {
        let row = row.as_ref().unwrap();
        assert_eq!(row.len(), e);
        let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{name}: |row| = {norm}");
        for (j, (w, tj)) in want(&g, name).iter().zip(&t).enumerate() {
            let dot: f32 = row.iter().zip(tj).map(|(x, y)| x * y).sum();
            assert!(
                (scale * dot - w).abs() <= TOL,
                "{name}, label {j}: {} vs {w}",
                scale * dot
            );
        }
    }
    // The labels' own rows are the same texts' rows; embedding texts changed nothing.
    assert_eq!(c.text_features().len(), texts.len() * e);
    for (r, tr) in c.text_features().chunks_exact(e).zip(&t) {
        assert!(r.iter().zip(tr).all(|(x, y)| (x - y).abs() < 1e-6));
    }
    assert_close(
        &c.classify_path(&pa).unwrap(),
        &want(&g, a),
        "after embed_texts",
    );
    // A text the label rules refuse is an error naming the texts; the labels stay.
    assert!(c.embed_texts::<&str>(&[]).unwrap().is_empty());
    let err = c.embed_texts(&["cat", ""]).unwrap_err();
    assert!(err.to_string().contains("texts"), "{err}");
    assert_eq!(c.labels().len(), texts.len());
}
