//! The one place that speaks to burn-collective: the sum of a tensor over every replica of the run.
//!
//! burn-collective 0.21 was removed upstream after 0.21 (replaced by a `DistributedContext` API), so the
//! trainer sees only [`Collective`]; moving engines is this file. Inside a process the replicas (threads, one
//! model each) register with burn-collective's local server and all-reduce through it. Across processes
//! (`--nodes`) the first replica of each process then sums the process's result with the other processes'
//! over [`Star`] and hands it back to its siblings with burn-collective's broadcast. Its state is
//! process-wide: one group per process at a time.
use std::sync::Arc;

use anyhow::{anyhow, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};

use super::star::Star;

/// The collective operations a data-parallel step needs.
pub trait Collective<B: Backend>: Send {
    /// The element-wise sum of `t` over every replica, the same values on each.
    fn all_reduce_sum(&mut self, t: Tensor<B, 1>) -> Result<Tensor<B, 1>>;
    /// Leaves the group after the last collective operation.
    fn finish(&mut self) -> Result<()>;
}

/// One replica's membership: its index among its process's `devices` replicas, and the process's link to
/// the other processes, if any.
pub struct Group<B: Backend> {
    local: usize,
    devices: usize,
    star: Option<Arc<Star>>,
    device: B::Device,
}

impl<B: Backend> Group<B> {
    /// Joins the process's group; returns once all `devices` replicas of the process have joined.
    pub fn join(local: usize, devices: usize, device: B::Device, star: Option<Arc<Star>>) -> Result<Self> {
        if devices > 1 {
            let config = CollectiveConfig::default().with_num_devices(devices);
            burn_collective::register::<B>(PeerId(local as u32), device.clone(), config)
                .map_err(|e| anyhow!("replica {local}: joining the all-reduce group: {e:?}"))?;
        }
        Ok(Self { local, devices, star, device })
    }
}

impl<B: Backend> Collective<B> for Group<B> {
    fn all_reduce_sum(&mut self, t: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
        let id = PeerId(self.local as u32);
        let err = |what: &str, e| anyhow!("replica {}: {what}: {e:?}", self.local);
        let t = if self.devices > 1 {
            let p = burn_collective::all_reduce::<B>(id, t.into_primitive().tensor(), ReduceOperation::Sum)
                .map_err(|e| err("all-reduce", e))?;
            Tensor::from_primitive(TensorPrimitive::Float(p))
        } else {
            t
        };
        let Some(star) = &self.star else { return Ok(t) };
        if self.local != 0 {
            let p = burn_collective::broadcast::<B>(id, None).map_err(|e| err("receiving the sum", e))?;
            return Ok(Tensor::from_primitive(TensorPrimitive::Float(p)));
        }
        let n = t.dims()[0];
        let host = t.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| anyhow!("{e:?}"))?;
        let sum = Tensor::<B, 1>::from_data(TensorData::new(star.all_reduce_sum(host)?, [n]), &self.device);
        if self.devices == 1 {
            return Ok(sum);
        }
        let p = burn_collective::broadcast::<B>(id, Some(sum.into_primitive().tensor()))
            .map_err(|e| err("sending the sum", e))?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(p)))
    }

    fn finish(&mut self) -> Result<()> {
        if self.devices > 1 {
            burn_collective::finish_collective::<B>(PeerId(self.local as u32))
                .map_err(|e| anyhow!("replica {}: leaving the all-reduce group: {e:?}", self.local))?;
        }
        Ok(())
    }
}
