//! Classify an in-memory image with your own labels: the five lines an app needs.
//!
//!     cargo run --example classify [MODEL_DIR PROMPTS IMAGE]
//!
//! With no arguments it uses the committed tiny synthetic model and a fixture photo.

fn main() -> Result<(), maple::Error> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tiny = root.join("tests/fixtures/tiny");
    let mut args = std::env::args_os().skip(1).map(std::path::PathBuf::from);
    let model = args.next().unwrap_or_else(|| tiny.clone());
    let prompts = args
        .next()
        .unwrap_or_else(|| tiny.join("maple_prompts.safetensors"));
    let image = args
        .next()
        .unwrap_or_else(|| root.join("tests/fixtures/images/photo_320x240.jpg"));
    let bytes = std::fs::read(&image).map_err(|e| maple::Error::io(&image, e))?;

    // The five lines:
    let mut classifier = maple::Classifier::builder(&model)
        .prompts(&prompts)
        .labels(["cat", "dog", "a red car", "Eiffel Tower"])
        .build()?;
    let result = classifier.classify_bytes(&bytes)?;

    println!("{}", classifier.device());
    for s in result.top(3) {
        println!("{:>7.3}  {:>6.2}%  {}", s.logit, 100.0 * s.prob, s.label);
    }
    Ok(())
}
