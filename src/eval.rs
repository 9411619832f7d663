//! Accuracy as the prompt-learning papers report it: on an ImageFolder, or on a Dassl/CoOp split
//! file (`split_zhou_<dataset>.json`) with the base-to-novel class split MaPLe, CoOp and CoCoOp
//! use (`docs/training.md` §4): the labels of the training list, sorted, the first ⌈C/2⌉ are
//! "base" and the rest "novel", each half relabelled from 0, the class names of a half taken
//! from its training items. Each half is evaluated against its own class names only, and the
//! papers' summary is the harmonic mean of the two accuracies.

use crate::classify::{Classifier, ImageSource};
use crate::error::{path_display, Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One image of a split: its path (the split's, joined to the image folder), label and class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The image file.
    pub path: PathBuf,
    /// Its class index in the split.
    pub label: usize,
    /// Its class name in the split.
    pub classname: String,
}

/// A split file's three lists.
#[derive(Clone, Debug, Default)]
pub struct Split {
    /// `train`.
    pub train: Vec<Item>,
    /// `val`.
    pub val: Vec<Item>,
    /// `test`.
    pub test: Vec<Item>,
}

/// Which classes of a split to evaluate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subsample {
    /// Every class.
    All,
    /// The first half of the sorted training labels (rounded up).
    Base,
    /// The rest.
    New,
}

/// Images and the class names they are classified against (label `i` is `classes[i]`).
#[derive(Clone, Debug, Default)]
pub struct EvalSet {
    /// Class names, by label.
    pub classes: Vec<String>,
    /// `(image, label)` pairs.
    pub items: Vec<(PathBuf, usize)>,
}

/// Largest split file read (the biggest of the papers' splits, ImageNet's aside, is ~10 MB).
pub const MAX_SPLIT_BYTES: u64 = 256 << 20;

impl Split {
    /// Reads `split_zhou_*.json`: `{"train": [[path, label, classname], …], "val": …, "test": …}`,
    /// paths relative to `image_dir`.
    pub fn read(path: &Path, image_dir: &Path) -> Result<Split> {
        let bad = |why: String| Error::Invalid(format!("{}: {why}", path_display(path)));
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(bad("is a directory, not a split file".into()));
        }
        let text = crate::loader::read_at_most(&file, MAX_SPLIT_BYTES)
            .map_err(|e| Error::io(path, e))?
            .ok_or_else(|| {
                bad(format!(
                    "larger than {} MiB, not a split file",
                    MAX_SPLIT_BYTES >> 20
                ))
            })?;
        let v: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON ({e})")))?;
        let list = |key: &str| -> Result<Vec<Item>> {
            let Some(items) = v.get(key) else {
                return Err(bad(format!("no \"{key}\" list")));
            };
            let items = items
                .as_array()
                .ok_or_else(|| bad(format!("\"{key}\" is not a list")))?;
            items
                .iter()
                .enumerate()
                .map(|(i, it)| {
                    let entry = || bad(format!("\"{key}\"[{i}] is not [path, label, classname]"));
                    let a = it.as_array().filter(|a| a.len() == 3).ok_or_else(entry)?;
                    let p = a[0].as_str().ok_or_else(entry)?;
                    let label = a[1].as_u64().ok_or_else(entry)?;
                    let label = usize::try_from(label)
                        .ok()
                        .filter(|&l| l < 1 << 20)
                        .ok_or_else(|| {
                            bad(format!("\"{key}\"[{i}]: label {label} is too large"))
                        })?;
                    let classname = a[2].as_str().ok_or_else(entry)?.to_string();
                    Ok(Item {
                        path: image_dir.join(p),
                        label,
                        classname,
                    })
                })
                .collect()
        };
        let split = Split {
            train: list("train")?,
            val: list("val")?,
            test: list("test")?,
        };
        if split.train.is_empty() {
            return Err(bad(
                "the \"train\" list is empty: the class names come from it".into(),
            ));
        }
        Ok(split)
    }

    /// The `items` (`test` or `val`) of the classes `which` selects, relabelled, with those
    /// classes' names from the training list, as Dassl's `subsample_classes` and
    /// `get_lab2cname` make them.
    pub fn subsample(&self, items: &[Item], which: Subsample) -> Result<EvalSet> {
        let mut names: BTreeMap<usize, &str> = BTreeMap::new();
        for it in &self.train {
            // (Dassl keeps whichever name a set iteration meets last; a split names each label
            // once, and a disagreement is refused.)
            if let Some(old) = names.insert(it.label, &it.classname) {
                if old != it.classname {
                    return Err(Error::Invalid(format!(
                        "the split names label {} both \"{old}\" and \"{}\"",
                        it.label, it.classname
                    )));
                }
            }
        }
        let labels: Vec<usize> = names.keys().copied().collect();
        let m = labels.len().div_ceil(2);
        let selected: &[usize] = match which {
            Subsample::All => &labels,
            Subsample::Base => &labels[..m],
            Subsample::New => &labels[m..],
        };
        let relabel: BTreeMap<usize, usize> =
            selected.iter().enumerate().map(|(i, &l)| (l, i)).collect();
        Ok(EvalSet {
            classes: selected.iter().map(|l| names[l].to_string()).collect(),
            items: items
                .iter()
                .filter_map(|it| relabel.get(&it.label).map(|&l| (it.path.clone(), l)))
                .collect(),
        })
    }
}

impl EvalSet {
    /// An ImageFolder (`DIR/<class>/<image>`, classes in sorted order), as `maple-train` reads it.
    pub fn image_folder(dir: &Path) -> Result<EvalSet> {
        let d = crate::train::Dataset::read(dir)?;
        Ok(EvalSet {
            classes: d.classes.labels.iter().map(|l| l.text.clone()).collect(),
            items: d.items,
        })
    }
}

/// What to evaluate on a split file: the classes and the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Base classes, then novel classes (the papers' table, with their harmonic mean).
    BaseToNew,
    /// One subsample.
    Only(Subsample),
}

/// The parts a split file is evaluated in, named as reports name them ("base", "novel", "all"):
/// `list` is "test" or "val", `images` the folder the split's paths are relative to. A part whose
/// classes have no image in the list is an error.
pub fn split_parts(
    split: &Path,
    images: &Path,
    protocol: Protocol,
    list: &str,
) -> Result<Vec<(&'static str, EvalSet)>> {
    let s = Split::read(split, images)?;
    let items = match list {
        "test" => &s.test,
        "val" => &s.val,
        l => {
            return Err(Error::Invalid(format!(
                "list \"{l}\": use \"test\" or \"val\""
            )))
        }
    };
    let which: &[(&'static str, Subsample)] = match protocol {
        Protocol::BaseToNew => &[("base", Subsample::Base), ("novel", Subsample::New)],
        Protocol::Only(Subsample::All) => &[("all", Subsample::All)],
        Protocol::Only(Subsample::Base) => &[("base", Subsample::Base)],
        Protocol::Only(Subsample::New) => &[("novel", Subsample::New)],
    };
    let mut parts = Vec::new();
    for &(name, w) in which {
        let set = s.subsample(items, w)?;
        if set.items.is_empty() {
            return Err(Error::Invalid(format!(
                "{}: the {name} classes have no images in the {list} list",
                path_display(split)
            )));
        }
        parts.push((name, set));
    }
    Ok(parts)
}

/// What an evaluation found.
#[derive(Clone, Debug, Default)]
pub struct Accuracy {
    /// Images whose best label is theirs.
    pub correct: usize,
    /// Images classified.
    pub total: usize,
    /// Images that could not be read, with the error (not counted in `total`).
    pub unreadable: Vec<(PathBuf, String)>,
}

impl Accuracy {
    /// `correct / total` (0 when nothing was classified).
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }
}

/// The harmonic mean of two accuracies (the papers' "HM"); 0 when both are 0.
pub fn harmonic_mean(a: f64, b: f64) -> f64 {
    if a + b == 0.0 {
        0.0
    } else {
        2.0 * a * b / (a + b)
    }
}

/// Classifies `set`'s images against its class names (the classifier's labels are replaced) and
/// counts the ones whose best label is theirs (ties go to the lower label, as `argmax` does).
/// `progress(done, total)` is called after each batch.
pub fn evaluate(
    c: &mut Classifier,
    set: &EvalSet,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Accuracy> {
    if set.classes.is_empty() {
        return Err(Error::Invalid("no classes to evaluate against".into()));
    }
    // (A classifier built with these classes already has their text features.)
    if !c.labels().iter().map(|l| &l.text).eq(&set.classes) {
        c.set_labels(&set.classes)?;
    }
    let mut acc = Accuracy::default();
    let chunk = 64;
    for (n, batch) in set.items.chunks(chunk).enumerate() {
        let sources: Vec<ImageSource<'_>> =
            batch.iter().map(|(p, _)| ImageSource::Path(p)).collect();
        for (r, (path, label)) in c.classify_batch(&sources)?.into_iter().zip(batch) {
            match r {
                Ok(r) => {
                    acc.total += 1;
                    acc.correct += usize::from(r.best().index == *label);
                }
                Err(e) => acc.unreadable.push((path.clone(), e.to_string())),
            }
        }
        progress(
            (n * chunk + batch.len()).min(set.items.len()),
            set.items.len(),
        );
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(label: usize, name: &str) -> Item {
        Item {
            path: PathBuf::from(format!("{name}.jpg")),
            label,
            classname: name.into(),
        }
    }

    #[test]
    fn base_and_new_halves_follow_dassl() {
        // Labels 0..4 (5 classes): base = 0, 1, 2 (⌈5/2⌉ = 3), new = 3, 4, each relabelled from 0.
        let names = ["a", "b", "c", "d", "e"];
        let split = Split {
            train: (0..5).rev().map(|l| item(l, names[l])).collect(),
            val: vec![],
            test: vec![item(4, "e"), item(0, "a"), item(3, "d"), item(2, "c")],
        };
        let base = split.subsample(&split.test, Subsample::Base).unwrap();
        assert_eq!(base.classes, ["a", "b", "c"]);
        let labels: Vec<usize> = base.items.iter().map(|i| i.1).collect();
        assert_eq!(labels, [0, 2]);
        let new = split.subsample(&split.test, Subsample::New).unwrap();
        assert_eq!(new.classes, ["d", "e"]);
        let labels: Vec<usize> = new.items.iter().map(|i| i.1).collect();
        assert_eq!(labels, [1, 0]);
        let all = split.subsample(&split.test, Subsample::All).unwrap();
        assert_eq!(all.classes.len(), 5);
        assert_eq!(all.items.len(), 4);
        // 2·0.8·0.5 / 1.3
        assert!((harmonic_mean(0.8, 0.5) - 0.615_384_6).abs() < 1e-6);
        assert_eq!(harmonic_mean(0.0, 0.0), 0.0);
    }

    #[test]
    fn a_label_named_twice_differently_is_refused() {
        let split = Split {
            train: vec![item(0, "a"), item(0, "b")],
            ..Split::default()
        };
        let e = split.subsample(&[], Subsample::All).unwrap_err();
        assert!(e.to_string().contains("both \"a\" and \"b\""), "{e}");
    }
}
