//! maple-desktop: a window in which a person opens or drops an image, types labels (one per
//! line) and sees the five best as bars. The model runs on a worker thread through the `maple`
//! library (device auto: a hardware GPU if there is one, else the CPU); the window never blocks.
//!
//!     cargo run --release -p maple-desktop -- [--model DIR|HUB_ID] [--prompts FILE]
//!                                             [--image FILE] [--labels "cat,dog"]
//!
//! `--screenshot OUT.png` is for tests: once the first result is on screen, it saves the
//! window's pixels to OUT.png, prints the top-1 line to stdout and quits.

use eframe::egui;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

const USAGE: &str = "usage: maple-desktop [--model DIR|HUB_ID] [--prompts FILE] [--image FILE] [--labels \"cat,dog\"] [--screenshot OUT.png]";

struct Args {
    model: OsString,
    prompts: Option<PathBuf>,
    image: Option<PathBuf>,
    labels: Vec<String>,
    screenshot: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        model: std::env::var_os("MAPLE_MODEL")
            .unwrap_or_else(|| "openai/clip-vit-base-patch16".into()),
        prompts: None,
        image: None,
        labels: ["a cat", "a dog", "a car", "a building", "food"]
            .map(String::from)
            .to_vec(),
        screenshot: None,
    };
    let mut it = std::env::args_os().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or(format!("{} needs a value", flag.to_string_lossy()))
        };
        match flag.to_str() {
            Some("--model") => a.model = value()?,
            Some("--prompts") => a.prompts = Some(value()?.into()),
            Some("--image") => a.image = Some(value()?.into()),
            Some("--labels") => {
                let v = value()?;
                let v = v.to_str().ok_or("--labels: not UTF-8")?;
                a.labels = v.split(',').map(|s| s.trim().to_string()).collect();
            }
            Some("--screenshot") => a.screenshot = Some(value()?.into()),
            Some("-h" | "--help") => return Err(USAGE.into()),
            _ => {
                return Err(format!(
                    "unknown argument {}\n{USAGE}",
                    flag.to_string_lossy()
                ))
            }
        }
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("maple-desktop: {e}");
            std::process::exit(1);
        }
    };
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("maple")
            .with_inner_size([900.0, 560.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    let result = eframe::run_native(
        "maple",
        options,
        Box::new(|cc| Ok(Box::new(App::new(cc, args)))),
    );
    if let Err(e) = result {
        eprintln!("maple-desktop: cannot open a window: {e}");
        std::process::exit(1);
    }
}

/// What the window asks the worker for.
enum Job {
    Labels(Vec<String>),
    Classify { name: String, bytes: Arc<Vec<u8>> },
}

/// What the worker answers.
enum Reply {
    Ready(String),
    Labels(Result<(), String>),
    Scores {
        name: String,
        top: Vec<(String, f32, f32)>,
        ms: u128,
    },
    Failed(String),
}

/// Owns the classifier (it is `Send`): builds it, then serves jobs until the window closes.
fn worker(
    model: OsString,
    prompts: Option<PathBuf>,
    labels: Vec<String>,
    jobs: Receiver<Job>,
    replies: Sender<Reply>,
    ctx: egui::Context,
) {
    let send = |r: Reply| {
        let _ = replies.send(r);
        ctx.request_repaint();
    };
    let mut builder = maple::Classifier::builder(&model).labels(&labels);
    if let Some(p) = &prompts {
        builder = builder.prompts(p);
    }
    let mut classifier = match builder.build() {
        Ok(c) => c,
        Err(e) => return send(Reply::Failed(e.to_string())),
    };
    send(Reply::Ready(classifier.device().to_string()));
    for job in jobs {
        match job {
            Job::Labels(l) => send(Reply::Labels(
                classifier.set_labels(&l).map_err(|e| e.to_string()),
            )),
            Job::Classify { name, bytes } => {
                let t = Instant::now();
                match classifier.classify_bytes(&bytes) {
                    Ok(r) => send(Reply::Scores {
                        name,
                        top: r
                            .top(5)
                            .iter()
                            .map(|s| (s.label.to_string(), s.prob, s.logit))
                            .collect(),
                        ms: t.elapsed().as_millis(),
                    }),
                    Err(e) => send(Reply::Failed(format!("{name}: {e}"))),
                }
            }
        }
    }
}

struct App {
    jobs: Sender<Job>,
    replies: Receiver<Reply>,
    ready: bool,
    device: String,
    status: String,
    error: bool,
    path: String,
    labels_text: String,
    labels_sent: String,
    image: Option<(String, Arc<Vec<u8>>)>,
    preview: Option<egui::TextureHandle>,
    top: Vec<(String, f32, f32)>,
    screenshot: Option<PathBuf>,
    /// Frames drawn since the first result (the screenshot waits for it to be on screen).
    shown_for: u32,
}

impl App {
    fn new(cc: &eframe::CreationContext<'_>, args: Args) -> App {
        let (jobs, job_rx) = channel();
        let (reply_tx, replies) = channel();
        let ctx = cc.egui_ctx.clone();
        let (model, prompts, labels) = (
            args.model.clone(),
            args.prompts.clone(),
            args.labels.clone(),
        );
        std::thread::spawn(move || worker(model, prompts, labels, job_rx, reply_tx, ctx));
        let labels_text = args.labels.join("\n");
        let mut app = App {
            jobs,
            replies,
            ready: false,
            device: String::new(),
            status: format!("loading {} …", args.model.to_string_lossy()),
            error: false,
            path: String::new(),
            labels_sent: labels_text.clone(),
            labels_text,
            image: None,
            preview: None,
            top: Vec::new(),
            screenshot: args.screenshot,
            shown_for: 0,
        };
        if let Some(p) = args.image {
            app.path = p.display().to_string();
            app.open(&cc.egui_ctx, p.display().to_string(), std::fs::read(&p));
        }
        app
    }

    /// Shows an image and sends it to the worker.
    fn open(&mut self, ctx: &egui::Context, name: String, bytes: std::io::Result<Vec<u8>>) {
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => return self.fail(format!("{name}: {e}")),
        };
        let px = match maple::imageio::decode_rgb8(&bytes) {
            Ok(px) => px,
            Err(e) => return self.fail(format!("{name}: {e}")),
        };
        if let Some(img) = image::RgbImage::from_raw(px.width as u32, px.height as u32, px.data) {
            let (w, h) = (img.width().max(1), img.height().max(1));
            let scale = (360.0 / w.max(h) as f32).min(1.0);
            let small = image::imageops::thumbnail(
                &img,
                ((w as f32 * scale) as u32).max(1),
                ((h as f32 * scale) as u32).max(1),
            );
            let size = [small.width() as usize, small.height() as usize];
            let color = egui::ColorImage::from_rgb(size, small.as_raw());
            self.preview = Some(ctx.load_texture("preview", color, Default::default()));
        }
        self.top.clear();
        self.image = Some((name, Arc::new(bytes)));
        self.submit();
    }

    /// Sends the labels (if they changed) and the current image to the worker.
    fn submit(&mut self) {
        if self.labels_text != self.labels_sent {
            let labels: Vec<String> = self
                .labels_text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            let _ = self.jobs.send(Job::Labels(labels));
            self.labels_sent = self.labels_text.clone();
        }
        if let Some((name, bytes)) = &self.image {
            let _ = self.jobs.send(Job::Classify {
                name: name.clone(),
                bytes: bytes.clone(),
            });
            self.status = format!("classifying {name} …");
            self.error = false;
        }
    }

    fn fail(&mut self, message: String) {
        self.status = message;
        self.error = true;
    }

    fn take_replies(&mut self) {
        while let Ok(r) = self.replies.try_recv() {
            match r {
                Reply::Ready(device) => {
                    self.ready = true;
                    self.device = device;
                    if self.image.is_none() {
                        self.status = "open or drop an image".into();
                    }
                }
                Reply::Labels(Ok(())) => {}
                Reply::Labels(Err(e)) => {
                    self.fail(e);
                    self.top.clear();
                }
                Reply::Scores { name, top, ms } => {
                    self.status = format!("{name}: {ms} ms");
                    self.error = false;
                    self.top = top;
                }
                Reply::Failed(e) => self.fail(e),
            }
        }
    }

    /// The test hook: once the result has been drawn, save the window and quit.
    fn maybe_screenshot(&mut self, ctx: &egui::Context) {
        let Some(out) = self.screenshot.clone() else {
            return;
        };
        if self.error {
            eprintln!("maple-desktop: {}", self.status);
            std::process::exit(1);
        }
        if self.top.is_empty() {
            return;
        }
        self.shown_for += 1;
        if self.shown_for == 3 {
            let (label, prob, logit) = self.top[0].clone();
            println!(
                "top-1: {label} {:.2}% (logit {logit:.3}) on {}",
                100.0 * prob,
                self.device
            );
            let ctx2 = ctx.clone();
            ctx.request_screenshot(move |img| {
                let rgba: Vec<u8> = img.pixels.iter().flat_map(|c| c.to_array()).collect();
                let (w, h) = (img.size[0] as u32, img.size[1] as u32);
                if let Err(e) = image::save_buffer(&out, &rgba, w, h, image::ColorType::Rgba8) {
                    eprintln!("maple-desktop: {}: {e}", out.display());
                    std::process::exit(1);
                }
                ctx2.send_viewport_cmd(egui::ViewportCommand::Close);
                ctx2.request_repaint();
            });
        }
        ctx.request_repaint();
    }
}

impl eframe::App for App {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        self.take_replies();
        let dropped = ctx.input(|i| i.raw.dropped_files.first().cloned());
        if let Some(f) = dropped {
            let name = f.path().display().to_string();
            self.path = name.clone();
            let bytes = f.bytes().map_err(std::io::Error::other);
            self.open(&ctx, name, bytes);
        }

        egui::Panel::bottom("status").show(ui, |ui| {
            let color = if self.error {
                egui::Color32::from_rgb(190, 20, 40)
            } else {
                ui.visuals().text_color()
            };
            ui.colored_label(color, &self.status);
            ui.weak(&self.device);
        });
        egui::Panel::left("inputs")
            .default_size(320.0)
            .show(ui, |ui| {
                ui.heading("Image");
                ui.horizontal(|ui| {
                    ui.add(
                        egui::TextEdit::singleline(&mut self.path).hint_text("path of an image"),
                    );
                    if ui.button("Open").clicked() && !self.path.is_empty() {
                        let p = self.path.clone();
                        self.open(&ctx, p.clone(), std::fs::read(&p));
                    }
                });
                ui.weak("…or drop an image on the window.");
                ui.separator();
                ui.heading("Labels");
                ui.weak("One per line.");
                ui.add(
                    egui::TextEdit::multiline(&mut self.labels_text)
                        .desired_rows(10)
                        .desired_width(f32::INFINITY),
                );
                ui.add_enabled_ui(self.ready && self.image.is_some(), |ui| {
                    if ui.button("Classify").clicked() {
                        self.submit();
                    }
                });
            });
        egui::CentralPanel::default().show(ui, |ui| {
            if let Some(t) = &self.preview {
                ui.add(egui::Image::new(egui::load::SizedTexture::new(
                    t.id(),
                    t.size_vec2(),
                )));
            }
            ui.add_space(8.0);
            for (label, prob, logit) in &self.top {
                ui.horizontal(|ui| {
                    ui.add_sized([180.0, 18.0], egui::Label::new(label.as_str()).truncate());
                    ui.add(
                        egui::ProgressBar::new(*prob)
                            .desired_width(280.0)
                            .fill(egui::Color32::from_rgb(59, 111, 216))
                            .text(format!("{:.1}%", 100.0 * prob)),
                    );
                    ui.weak(format!("{logit:.2}"));
                });
            }
        });
        self.maybe_screenshot(&ctx);
    }
}
