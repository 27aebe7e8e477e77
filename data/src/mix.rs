//! Several weighted sources mixed into one stream of rows, as `datasets.interleave_datasets(sources,
//! probabilities=p, seed=seed, stopping_strategy=...)` mixes map-style datasets (tested against it,
//! `data/tests/mix.rs`):
//!
//! - `p` are the weights divided by their sum; each row's source is drawn with numpy's
//!   `default_rng(seed).choice(len(sources), p=p)` ([`crate::numpy_rng`]), and the source's next row is taken;
//! - a source that runs out starts again from its first row (`datasets`' wrap-around);
//! - `first_exhausted` (`datasets`' default) stops right after some source yields its last row,
//!   `all_exhausted` once every source has yielded its last row at least once.
//!
//! A source's rows are read in its file order; the pipeline shuffles the mixed stream afterwards. The mixture
//! is the same on every epoch, as a `datasets` dataset interleaved once is, so resuming replays it exactly.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::numpy_rng::WeightedChoice;
use crate::record::{Row, RowSource};

/// When the mixture ends (`data.stopping_strategy`, `datasets`' names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stopping {
    #[default]
    FirstExhausted,
    AllExhausted,
}

/// Opens source `i` (from its first row) again.
pub type Open = Box<dyn Fn(usize) -> Result<Box<dyn RowSource>> + Send>;

pub struct Mix {
    open: Open,
    streams: Vec<Option<std::iter::Peekable<Box<dyn RowSource>>>>,
    /// Source `i` has yielded its last row at least once.
    reached: Vec<bool>,
    choice: WeightedChoice,
    stopping: Stopping,
    done: bool,
}

impl Mix {
    /// `weights` are positive (checked by the caller); every source is opened now, so a missing file fails here.
    pub fn new(weights: &[f64], seed: u64, stopping: Stopping, open: Open) -> Result<Self> {
        let total: f64 = weights.iter().sum();
        let p: Vec<f64> = weights.iter().map(|w| w / total).collect();
        let streams = (0..weights.len()).map(|i| open(i).map(|s| Some(s.peekable()))).collect::<Result<_>>()?;
        Ok(Self {
            open,
            streams,
            reached: vec![false; weights.len()],
            choice: WeightedChoice::new(seed, &p),
            stopping,
            done: false,
        })
    }

    /// The first source without a single row (`datasets` refuses to mix one, and so do we).
    pub fn empty_source(&mut self) -> Option<usize> {
        self.streams.iter_mut().position(|s| s.as_mut().is_some_and(|s| s.peek().is_none()))
    }

    /// The next row of the mixture and the index of its source.
    fn take(&mut self) -> Result<Option<(Result<Row>, usize)>> {
        if self.done {
            return Ok(None);
        }
        let s = self.choice.draw();
        if self.streams[s].is_none() {
            self.streams[s] = Some((self.open)(s)?.peekable());
        }
        let stream = self.streams[s].as_mut().expect("opened above");
        let Some(item) = stream.next() else {
            // Only an empty source (one whose rows are all held out or that has none) gets here.
            self.done = true;
            return Ok(None);
        };
        if stream.peek().is_none() {
            self.reached[s] = true;
            self.streams[s] = None; // wrap around: the next draw of `s` reads it from the start
        }
        self.done = match self.stopping {
            Stopping::FirstExhausted => self.reached.iter().any(|&r| r),
            Stopping::AllExhausted => self.reached.iter().all(|&r| r),
        };
        Ok(Some((item, s)))
    }
}

impl Iterator for Mix {
    type Item = Result<(Row, usize)>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.take() {
            Ok(Some((item, s))) => Some(item.map(|row| (row, s))),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
