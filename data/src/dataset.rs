//! What the pipeline reads: one dataset, or several mixed by weight ([`crate::mix`]), with the dataset's columns
//! renamed ([`crate::columns`]), ShareGPT roles ([`crate::sharegpt`]) and an optional held-out split
//! ([`crate::split`]). A [`DataSpec`] says it; a [`Dataset`] is one checked and ready to be read, any number of
//! times, always giving the same rows in the same order.

use std::path::PathBuf;
use std::sync::Arc;

use crate::columns::Columns;
use crate::error::{DataError, Result};
use crate::format::RowFormat;
use crate::mix::{Mix, Stopping};
use crate::record::{Row, RowSource};
use crate::sharegpt::Roles;
use crate::source::{open_dataset_with, resolve};
use crate::split::{count_rows, filter, held_out, Side, Split};

/// Rows with the index of their source.
pub type SourcedRows = Box<dyn Iterator<Item = Result<(Row, usize)>> + Send>;

/// One dataset of a mixture.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub path: PathBuf,
    /// Relative weight; only the ratios matter.
    pub weight: f64,
    /// This source's row format; `None`: the pipeline's `DataConfig::format`.
    pub format: Option<RowFormat>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DataSpec {
    pub sources: Vec<Source>,
    pub stopping: Stopping,
    /// Seeds the mixture's draws (the split has its own seed).
    pub seed: u64,
    pub columns: Columns,
    pub roles: Roles,
    pub split: Option<Split>,
}

impl DataSpec {
    /// One file or directory, read as it is.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            sources: vec![Source { path: path.into(), weight: 1.0, format: None }],
            stopping: Stopping::default(),
            seed: 0,
            columns: Columns::default(),
            roles: Roles::default(),
            split: None,
        }
    }

    /// The files, for messages: `a.jsonl` or `a.jsonl + b.parquet`.
    pub fn label(&self) -> String {
        self.sources.iter().map(|s| s.path.display().to_string()).collect::<Vec<_>>().join(" + ")
    }

    /// The first path (errors about the whole stream are reported against it).
    pub fn first_path(&self) -> &std::path::Path {
        &self.sources[0].path
    }
}

/// A checked [`DataSpec`] with its held-out rows found.
#[derive(Clone)]
pub struct Dataset {
    spec: Arc<DataSpec>,
    /// Per source, the held-out row indices (with a split).
    held: Vec<Arc<Vec<u64>>>,
}

impl Dataset {
    /// Checks the spec (weights, split fraction, columns, roles, every path) and, with a split, counts each
    /// source's rows once to choose the held-out ones.
    pub fn new(spec: DataSpec) -> Result<Self> {
        let config = |m: String| Err(DataError::Config(m));
        if spec.sources.is_empty() {
            return config("no data sources".into());
        }
        for (i, s) in spec.sources.iter().enumerate() {
            if !(s.weight.is_finite() && s.weight > 0.0) {
                return config(format!(
                    "data.sources[{i}] ({}): weight must be a positive number, got {}",
                    s.path.display(),
                    s.weight
                ));
            }
        }
        if let Some(split) = &spec.split {
            if !(split.fraction > 0.0 && split.fraction < 1.0) {
                return config(format!("data.eval_split must be between 0 and 1 (exclusive), got {}", split.fraction));
            }
        }
        if let Err((key, m)) = spec.columns.check() {
            return config(format!("data.columns.{key}: {m}"));
        }
        spec.roles.check().map_err(DataError::Config)?;
        for s in &spec.sources {
            resolve(&s.path)?; // a missing file or an unknown layout fails now, not at the first row
        }
        let mut held = Vec::new();
        if let Some(split) = &spec.split {
            for (i, s) in spec.sources.iter().enumerate() {
                let n = count_rows(open_dataset_with(&s.path, &spec.columns.sources())?)?;
                let h = held_out(n, split.fraction, split.seed, i).map_err(|m| DataError::dataset(&s.path, m))?;
                held.push(Arc::new(h));
            }
        }
        let d = Self { spec: Arc::new(spec), held };
        if d.spec.sources.len() > 1 && d.side() == Side::Train {
            if let Some(i) = d.mix()?.empty_source() {
                return Err(DataError::dataset(&d.spec.sources[i].path, "has no rows to mix"));
            }
        }
        Ok(d)
    }

    pub fn spec(&self) -> &DataSpec {
        &self.spec
    }

    fn side(&self) -> Side {
        self.spec.split.map_or(Side::Train, |s| s.side)
    }

    /// Source `i`'s rows on this dataset's side of the split.
    fn open_source(spec: &DataSpec, held: &[Arc<Vec<u64>>], i: usize) -> Result<Box<dyn RowSource>> {
        let rows = open_dataset_with(&spec.sources[i].path, &spec.columns.sources())?;
        Ok(match (spec.split, held.get(i)) {
            (Some(split), Some(h)) => filter(rows, h.clone(), split.side),
            _ => rows,
        })
    }

    fn mix(&self) -> Result<Mix> {
        let weights: Vec<f64> = self.spec.sources.iter().map(|s| s.weight).collect();
        let (spec, held) = (self.spec.clone(), self.held.clone());
        Mix::new(&weights, self.spec.seed, self.spec.stopping, Box::new(move |i| Self::open_source(&spec, &held, i)))
    }

    /// Every row with its source's index, columns renamed: one source as it is; several mixed (training side)
    /// or one after another (the held-out side, every held-out row once).
    pub fn rows(&self) -> Result<SourcedRows> {
        let rows: SourcedRows = if self.spec.sources.len() > 1 && self.side() == Side::Train {
            Box::new(self.mix()?)
        } else {
            let (spec, held) = (self.spec.clone(), self.held.clone());
            let n = spec.sources.len();
            let per_source =
                (0..n).map(move |i| Self::open_source(&spec, &held, i).map(|s| s.map(move |r| r.map(|r| (r, i)))));
            let mut chained: Vec<SourcedRows> = Vec::new();
            for s in per_source {
                chained.push(Box::new(s?));
            }
            Box::new(chained.into_iter().flatten())
        };
        let columns = self.spec.columns.clone();
        Ok(Box::new(rows.map(move |item| {
            item.map(|(mut row, i)| {
                columns.apply(&mut row);
                (row, i)
            })
        })))
    }

    /// The row format of source `i`, `default` when it names none.
    pub fn format(&self, i: usize, default: RowFormat) -> RowFormat {
        self.spec.sources[i].format.unwrap_or(default)
    }

    pub fn roles(&self) -> &Roles {
        &self.spec.roles
    }

    pub fn columns(&self) -> &Columns {
        &self.spec.columns
    }
}
