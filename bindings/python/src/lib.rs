//! `maple_clip._native`: the Rust side of the `maple-clip` wheel. It turns Python values into
//! the library's and back, and releases the GIL while a model loads, classifies, embeds or
//! trains. The public API (argument checking, PIL images, result classes, exceptions) is the
//! Python package in `python/maple_clip/`, which calls this module.
//!
//! Images arrive as a path (`str`, `os.PathLike`), an object with the buffer protocol holding
//! an encoded file (`bytes`, `memoryview`, a 1-D `uint8` array) or a C-contiguous `uint8` array
//! of H×W×3 or H×W×4 pixels. Buffers are read in place: nothing is copied before the decoder
//! or the preprocessing reads them.

use maple::train::{Dataset, Event, Schedule, TrainOptions, Trainer};
use maple::{outfile::OutputFile, ActiveDevice, Classifier, Device, Error, ImageSource, Precision};
use numpy::{PyArray1, PyArrayMethods};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The exception object for a library error: `OSError(errno, message, filename)` for I/O (which
/// Python turns into `FileNotFoundError`, `PermissionError`, …), else one of the classes in
/// `maple_clip._errors`, whose text is the line `maple-classify` prints.
fn error_object<'py>(py: Python<'py>, e: Error) -> PyResult<Bound<'py, PyAny>> {
    let line = e.to_string();
    let class = match &e {
        Error::Io { path, source } => {
            let errno = source
                .raw_os_error()
                .unwrap_or_else(|| match source.kind() {
                    std::io::ErrorKind::NotFound => 2,
                    std::io::ErrorKind::PermissionDenied => 13,
                    _ => 5, // EIO
                });
            let name = maple::path_display(path);
            let message = line
                .strip_prefix(&format!("{name}: "))
                .unwrap_or(&line)
                .to_string();
            let err = PyOSError::new_err((errno, message, path.as_os_str().to_os_string()));
            return Ok(err.into_value(py).into_bound(py).into_any());
        }
        Error::Image { image, .. } => {
            let cls = py.import("maple_clip._errors")?.getattr("ImageError")?;
            return cls.call1((line, image.clone()));
        }
        Error::Format { .. } | Error::Refused { .. } | Error::Model(_) => "ModelError",
        Error::Text(_) => "LabelError",
        Error::Device(_) => "DeviceError",
        Error::Compute(_) => "ComputeError",
        _ => "ConfigError",
    };
    py.import("maple_clip._errors")?
        .getattr(class)?
        .call1((line,))
}

fn to_err(py: Python<'_>, e: Error) -> PyErr {
    match error_object(py, e) {
        Ok(v) => PyErr::from_value(v),
        Err(e) => e,
    }
}

/// One image argument, held until the call returns.
enum Img {
    Path(PathBuf),
    Encoded(PyBuffer<u8>),
    Pixels {
        buf: PyBuffer<u8>,
        height: usize,
        width: usize,
        channels: usize,
    },
}

const IMAGE_KINDS: &str = "a path, bytes, a PIL image or a uint8 array of H×W×3 or H×W×4 pixels";

impl Img {
    fn from_py(obj: &Bound<'_, PyAny>) -> PyResult<Img> {
        if obj.is_instance_of::<PyString>() || obj.hasattr("__fspath__")? {
            return Ok(Img::Path(obj.extract::<PathBuf>()?));
        }
        let type_name = || {
            obj.get_type()
                .name()
                .map_or_else(|_| "?".to_string(), |n| n.to_string())
        };
        let buf = PyBuffer::<u8>::get(obj).map_err(|_| {
            PyTypeError::new_err(format!(
                "an image is {IMAGE_KINDS}; got {} (arrays must be uint8)",
                type_name()
            ))
        })?;
        if !buf.is_c_contiguous() {
            return Err(PyValueError::new_err(
                "a pixel array must be C-contiguous (numpy.ascontiguousarray makes one)",
            ));
        }
        match *buf.shape() {
            [] | [_] => Ok(Img::Encoded(buf)),
            [height, width, channels @ (3 | 4)] => Ok(Img::Pixels {
                buf,
                height,
                width,
                channels,
            }),
            ref shape => Err(PyValueError::new_err(format!(
                "a pixel array is H×W×3 (RGB) or H×W×4 (RGBA) uint8; got shape {shape:?}"
            ))),
        }
    }

    fn source(&self) -> ImageSource<'_> {
        match self {
            Img::Path(p) => ImageSource::Path(p),
            Img::Encoded(b) => ImageSource::Bytes(bytes(b)),
            Img::Pixels {
                buf,
                height,
                width,
                channels,
            } => {
                let (data, width, height) = (bytes(buf), *width, *height);
                if *channels == 3 {
                    ImageSource::Rgb8 {
                        data,
                        width,
                        height,
                    }
                } else {
                    ImageSource::Rgba8 {
                        data,
                        width,
                        height,
                    }
                }
            }
        }
    }
}

/// The bytes of a C-contiguous buffer, in place.
fn bytes(b: &PyBuffer<u8>) -> &[u8] {
    // SAFETY: `Img::from_py` checked the buffer is C-contiguous, so its `len_bytes()` bytes from
    // `buf_ptr()` are the data; the exporter keeps them alive while the `PyBuffer` (borrowed for
    // the slice's lifetime) holds the export. A caller that writes into an array from another
    // thread during the call gets whichever pixels the decoder reads; the slice is only read.
    unsafe { std::slice::from_raw_parts(b.buf_ptr() as *const u8, b.len_bytes()) }
}

fn images_from(list: &[Bound<'_, PyAny>]) -> PyResult<Vec<Img>> {
    list.iter().map(Img::from_py).collect()
}

fn device_arg(s: &str) -> PyResult<Device> {
    match s {
        "auto" => Ok(Device::Auto),
        "cpu" => Ok(Device::Cpu),
        "gpu" => Ok(Device::Gpu),
        _ => Err(PyValueError::new_err(format!(
            "device={s:?}: use \"auto\", \"cpu\" or \"gpu\""
        ))),
    }
}

fn precision_arg(s: &str) -> PyResult<Precision> {
    match s {
        "f32" => Ok(Precision::F32),
        "f16" => Ok(Precision::F16),
        "int8" => Ok(Precision::Int8),
        "bf16" => Ok(Precision::Bf16),
        _ => Err(PyValueError::new_err(format!(
            "precision={s:?}: use \"f32\", \"int8\", \"bf16\" or \"f16\" (GPU)"
        ))),
    }
}

/// A model with its labels' text features (`maple::Classifier`), shared by Python threads: one
/// call runs at a time, with the GIL released.
#[pyclass(module = "maple_clip._native", name = "Classifier")]
struct PyClassifier {
    inner: Mutex<Classifier>,
}

impl PyClassifier {
    /// Runs `f` on the classifier without the GIL.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Classifier) -> maple::Result<T> + Send,
    ) -> PyResult<T> {
        let r = py.detach(|| {
            let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut c)
        });
        r.map_err(|e| to_err(py, e))
    }
}

/// Each result as `(logits, probs)` arrays, or the exception object of its image.
fn per_image<'py, T>(
    py: Python<'py>,
    results: Vec<maple::Result<T>>,
    mut ok: impl FnMut(T) -> PyResult<Bound<'py, PyAny>>,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    results
        .into_iter()
        .map(|r| match r {
            Ok(v) => ok(v),
            Err(e) => error_object(py, e),
        })
        .collect()
}

#[pymethods]
impl PyClassifier {
    #[new]
    #[pyo3(signature = (model, *, labels=None, labels_file=None, prompts=None, template=None,
        device="auto", precision="f32", threads=0, batch_size=8, cache_dir=None))]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments, one per option
    fn new(
        py: Python<'_>,
        model: PathBuf,
        labels: Option<Vec<String>>,
        labels_file: Option<PathBuf>,
        prompts: Option<PathBuf>,
        template: Option<String>,
        device: &str,
        precision: &str,
        threads: usize,
        batch_size: usize,
        cache_dir: Option<PathBuf>,
    ) -> PyResult<Self> {
        let (device, precision) = (device_arg(device)?, precision_arg(precision)?);
        let r = py.detach(move || {
            let mut b = Classifier::builder(&model)
                .device(device)
                .precision(precision)
                .threads(threads)
                .batch_size(batch_size)
                .cache_dir(cache_dir);
            if let Some(p) = prompts {
                b = b.prompts(p);
            }
            if let Some(t) = template {
                b = b.template(t);
            }
            b = match (labels, labels_file) {
                (Some(l), _) => b.labels(l),
                (None, Some(f)) => b.label_set(maple::read_labels(f)?),
                (None, None) => b,
            };
            b.build()
        });
        let c = r.map_err(|e| to_err(py, e))?;
        Ok(PyClassifier {
            inner: Mutex::new(c),
        })
    }

    /// Per image: `(logits, probs)` or the image's exception object.
    fn classify_batch<'py>(
        &self,
        py: Python<'py>,
        images: Vec<Bound<'py, PyAny>>,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let imgs = images_from(&images)?;
        let results = self.with(py, |c| {
            let sources: Vec<ImageSource<'_>> = imgs.iter().map(Img::source).collect();
            c.classify_batch(&sources)
        })?;
        per_image(py, results, |r| {
            let logits = PyArray1::from_vec(py, r.logits);
            let probs = PyArray1::from_vec(py, r.probs);
            Ok((logits, probs).into_pyobject(py)?.into_any())
        })
    }

    /// Per image: its feature row, or the image's exception object.
    fn embed_images<'py>(
        &self,
        py: Python<'py>,
        images: Vec<Bound<'py, PyAny>>,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let imgs = images_from(&images)?;
        let results = self.with(py, |c| {
            let sources: Vec<ImageSource<'_>> = imgs.iter().map(Img::source).collect();
            c.embed_images(&sources)
        })?;
        per_image(
            py,
            results,
            |row| Ok(PyArray1::from_vec(py, row).into_any()),
        )
    }

    /// `[len(texts), E]` text features.
    fn embed_texts<'py>(&self, py: Python<'py>, texts: Vec<String>) -> PyResult<Bound<'py, PyAny>> {
        let (rows, dim) = self.with(py, |c| Ok((c.embed_texts(&texts)?, c.embedding_dim())))?;
        let n = rows.len();
        let flat: Vec<f32> = rows.into_iter().flatten().collect();
        Ok(PyArray1::from_vec(py, flat).reshape([n, dim])?.into_any())
    }

    /// The labels' text features, `[labels, E]`.
    fn text_features<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (flat, dim) = self.with(py, |c| Ok((c.text_features().to_vec(), c.embedding_dim())))?;
        let n = flat.len() / dim.max(1);
        Ok(PyArray1::from_vec(py, flat).reshape([n, dim])?.into_any())
    }

    fn set_labels(&self, py: Python<'_>, labels: Vec<String>) -> PyResult<()> {
        self.with(py, |c| c.set_labels(labels))
    }

    fn set_labels_file(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        self.with(py, |c| c.set_label_set(maple::read_labels(path)?))
    }

    fn labels(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.with(py, |c| {
            Ok(c.labels().iter().map(|l| l.text.clone()).collect())
        })
    }

    /// `("cpu" | "gpu", the sentence maple-classify prints)`.
    fn device(&self, py: Python<'_>) -> PyResult<(&'static str, String)> {
        self.with(py, |c| {
            let d = c.device();
            let kind = match d {
                ActiveDevice::Gpu { .. } => "gpu",
                _ => "cpu",
            };
            Ok((kind, d.to_string()))
        })
    }

    fn take_warnings(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.with(py, |c| Ok(c.take_warnings()))
    }

    fn embedding_dim(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |c| Ok(c.embedding_dim()))
    }

    fn logit_scale(&self, py: Python<'_>) -> PyResult<f32> {
        self.with(py, |c| Ok(c.logit_scale()))
    }

    /// Accuracy on an ImageFolder (`data`) or a split file (`split`), as maple-eval computes it:
    /// `{part: (accuracy, correct, images, classes, [(image, error)])}` and `hm` for base-to-new.
    /// The labels are put back afterwards.
    #[pyo3(signature = (data=None, split=None, images=None, subsample="base-to-new", list="test"))]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments, one per option
    fn evaluate<'py>(
        &self,
        py: Python<'py>,
        data: Option<PathBuf>,
        split: Option<PathBuf>,
        images: Option<PathBuf>,
        subsample: &str,
        list: &str,
    ) -> PyResult<Bound<'py, PyDict>> {
        use maple::eval::{evaluate, harmonic_mean, split_parts, EvalSet, Protocol, Subsample};
        let protocol = match subsample {
            "base-to-new" => Protocol::BaseToNew,
            "all" => Protocol::Only(Subsample::All),
            "base" => Protocol::Only(Subsample::Base),
            "new" => Protocol::Only(Subsample::New),
            s => {
                return Err(PyValueError::new_err(format!(
                    "subsample={s:?}: use \"base-to-new\", \"all\", \"base\" or \"new\""
                )))
            }
        };
        let list = list.to_string();
        let results = self.with(py, move |c| {
            let parts = match (split, data) {
                (Some(s), None) => {
                    let images = images
                        .unwrap_or_else(|| s.parent().map(Path::to_path_buf).unwrap_or_default());
                    split_parts(&s, &images, protocol, &list)?
                }
                (None, Some(d)) => vec![("all", EvalSet::image_folder(&d)?)],
                _ => {
                    return Err(Error::Invalid(
                        "evaluate takes an image folder or split=, one of the two".into(),
                    ))
                }
            };
            let saved: Vec<String> = c.labels().iter().map(|l| l.text.clone()).collect();
            let mut out = Vec::new();
            let mut failed = None;
            for (name, set) in &parts {
                match evaluate(c, set, &mut |_, _| {}) {
                    Ok(a) => out.push((*name, set.classes.len(), a)),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            c.set_labels(&saved)?;
            match failed {
                Some(e) => Err(e),
                None => Ok(out),
            }
        })?;
        let d = PyDict::new(py);
        for (name, classes, acc) in &results {
            let part = PyDict::new(py);
            part.set_item("accuracy", acc.fraction())?;
            part.set_item("correct", acc.correct)?;
            part.set_item("images", acc.total)?;
            part.set_item("classes", classes)?;
            let bad: Vec<(String, String)> = acc
                .unreadable
                .iter()
                .map(|(p, e)| (p.to_string_lossy().into_owned(), e.clone()))
                .collect();
            part.set_item("unreadable", bad)?;
            d.set_item(*name, part)?;
        }
        if let [(_, _, a), (_, _, b)] = &results[..] {
            d.set_item("hm", harmonic_mean(a.fraction(), b.fraction()))?;
        }
        Ok(d)
    }

    fn describe(&self, py: Python<'_>) -> PyResult<String> {
        self.with(py, |c| Ok(format!("{c:?}")))
    }
}

/// maple's default cache directory (`$XDG_CACHE_HOME/maple`, `~/.cache/maple`), if any.
#[pyfunction]
fn default_cache_dir() -> Option<PathBuf> {
    maple::default_cache_dir()
}

/// A training event as a dict, `kind` naming it (the fields of `maple::train::Event`).
fn event_dict<'py>(py: Python<'py>, ev: &Event) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match ev {
        Event::Start {
            images,
            classes,
            steps_per_epoch,
            total_steps,
            parameters,
            workspace_bytes,
            first_epoch,
        } => {
            d.set_item("kind", "start")?;
            d.set_item("images", images)?;
            d.set_item("classes", classes)?;
            d.set_item("steps_per_epoch", steps_per_epoch)?;
            d.set_item("total_steps", total_steps)?;
            d.set_item("parameters", parameters)?;
            d.set_item("workspace_bytes", workspace_bytes)?;
            d.set_item("first_epoch", first_epoch)?;
        }
        Event::Step {
            epoch,
            step,
            images,
            loss,
            accuracy,
            images_per_s,
            lr,
        } => {
            d.set_item("kind", "step")?;
            d.set_item("epoch", epoch)?;
            d.set_item("step", step)?;
            d.set_item("images", images)?;
            d.set_item("loss", loss)?;
            d.set_item("accuracy", accuracy)?;
            d.set_item("images_per_s", images_per_s)?;
            d.set_item("lr", lr)?;
        }
        Event::Skipped { path, error } => {
            d.set_item("kind", "skipped")?;
            d.set_item("path", path)?;
            d.set_item("error", error)?;
        }
        Event::Eval {
            epoch,
            accuracy,
            images,
        } => {
            d.set_item("kind", "eval")?;
            d.set_item("epoch", epoch)?;
            d.set_item("accuracy", accuracy)?;
            d.set_item("images", images)?;
        }
        Event::CheckpointFailed { path, error } => {
            d.set_item("kind", "checkpoint_failed")?;
            d.set_item("path", path)?;
            d.set_item("error", error)?;
        }
        Event::Epoch {
            epoch,
            loss,
            accuracy,
            checkpoint,
        } => {
            d.set_item("kind", "epoch")?;
            d.set_item("epoch", epoch)?;
            d.set_item("loss", loss)?;
            d.set_item("accuracy", accuracy)?;
            d.set_item("checkpoint", checkpoint)?;
        }
    }
    Ok(d)
}

/// `maple-train` as a function: the Python side has named and checked the options.
#[pyfunction]
#[pyo3(signature = (model, data, out, options, checkpoints=None, eval=None, resume=None,
    progress=None))]
#[allow(clippy::too_many_arguments)] // Python keyword arguments, one per option
fn train<'py>(
    py: Python<'py>,
    model: PathBuf,
    data: PathBuf,
    out: PathBuf,
    options: &Bound<'py, PyDict>,
    checkpoints: Option<PathBuf>,
    eval: Option<PathBuf>,
    resume: Option<PathBuf>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    fn get<'py, T: for<'a> FromPyObject<'a, 'py>>(
        d: &Bound<'py, PyDict>,
        key: &str,
    ) -> PyResult<T> {
        let v = d
            .get_item(key)?
            .ok_or_else(|| PyValueError::new_err(format!("train: option {key} missing")))?;
        v.extract::<T>()
            .map_err(|_| PyTypeError::new_err(format!("train: option {key} has the wrong type")))
    }
    let schedule = match get::<String>(options, "lr_schedule")?.as_str() {
        "cosine" => Schedule::Cosine,
        "constant" => Schedule::Constant,
        s => {
            return Err(PyValueError::new_err(format!(
                "lr_schedule={s:?}: use \"cosine\" or \"constant\""
            )))
        }
    };
    let threads: usize = get(options, "threads")?;
    let name: String = get(options, "method")?;
    let method = maple::engine::Method::from_name(&name).ok_or_else(|| {
        PyValueError::new_err(format!(
            "method={name:?}: use \"maple\", \"coop\", \"cocoop\", \"ivlp\" or \"vpt\""
        ))
    })?;
    // The method's recipe where an option is None (maple-train's defaults per --method).
    let recipe = TrainOptions::recipe(method);
    let n_ctx = get::<Option<usize>>(options, "n_ctx")?.unwrap_or(recipe.n_ctx);
    let opts = TrainOptions {
        method,
        epochs: get::<Option<usize>>(options, "epochs")?.unwrap_or(recipe.epochs),
        max_steps: get(options, "max_steps")?,
        batch_size: get::<Option<usize>>(options, "batch_size")?.unwrap_or(recipe.batch_size),
        lr: get::<Option<f32>>(options, "lr")?.unwrap_or(recipe.lr),
        schedule,
        momentum: get(options, "momentum")?,
        weight_decay: get(options, "weight_decay")?,
        n_ctx,
        depth: get::<Option<usize>>(options, "depth")?.unwrap_or(recipe.depth),
        template: get::<Option<String>>(options, "template")?
            .unwrap_or_else(|| TrainOptions::default_template(method, n_ctx)),
        shots: get(options, "shots")?,
        seed: get(options, "seed")?,
        augment: get(options, "augment")?,
        shuffle: get(options, "shuffle")?,
        threads: if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        },
        init: get(options, "init")?,
    };
    // The last of each kind of event, returned as the run's summary.
    let mut last: Vec<(String, Py<PyDict>)> = Vec::new();
    let mut callback_error: Option<PyErr> = None;
    let r = py.detach(|| -> maple::Result<usize> {
        OutputFile::check(&out)?;
        let mut data = Dataset::read(&data)?;
        if let Some(k) = opts.shots {
            if k == 0 {
                return Err(Error::Invalid("shots must be at least 1".into()));
            }
            data = data.few_shot(k, opts.seed);
        }
        let mut t = Trainer::new(&model, data, opts)?;
        if let Some(e) = &eval {
            t.set_eval(e)?;
        }
        if let Some(r) = &resume {
            t.resume(r)?;
        }
        if let Some(c) = &checkpoints {
            Trainer::check_checkpoints(c)?;
        }
        let mut steps = 0;
        t.run(checkpoints.as_deref(), &mut |ev| {
            if let Event::Step { step, .. } = ev {
                steps = step;
            }
            Python::attach(|py| {
                let d = match event_dict(py, &ev) {
                    Ok(d) => d,
                    Err(e) => {
                        callback_error.get_or_insert(e);
                        return;
                    }
                };
                if let Some(cb) = &progress {
                    if callback_error.is_none() {
                        if let Err(e) = cb.call1(py, (d.clone(),)) {
                            callback_error = Some(e);
                        }
                    }
                }
                let kind: String = d
                    .get_item("kind")
                    .ok()
                    .flatten()
                    .and_then(|k| k.extract().ok())
                    .unwrap_or_default();
                last.retain(|(k, _)| *k != kind);
                last.push((kind, d.unbind()));
            });
        })?;
        let mut f = OutputFile::create(&out)?;
        f.write_bytes(&t.prompts_bytes())?;
        f.commit()?;
        Ok(steps)
    });
    let steps = r.map_err(|e| to_err(py, e))?;
    if let Some(e) = callback_error {
        return Err(e);
    }
    let summary = PyDict::new(py);
    summary.set_item("out", &out)?;
    summary.set_item("steps", steps)?;
    for (kind, d) in last {
        summary.set_item(kind, d.bind(py))?;
    }
    Ok(summary)
}

/// Whether `path` is a file a checkpoint folder can go beside (not a device, FIFO or `-`).
#[pyfunction]
fn out_is_file(path: PathBuf) -> bool {
    maple::outfile::is_plain_file_path(&path)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyClassifier>()?;
    m.add_function(wrap_pyfunction!(default_cache_dir, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(out_is_file, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
