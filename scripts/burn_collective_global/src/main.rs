//! Two nodes (one device each, burn-flex) all-reduce five times back to back through burn-collective 0.21's
//! global mode: `orch PORT` is the orchestrator, `node RANK ORCH_PORT DATA_PORT centralized|tree|ring` a node.
//! Each node prints every sum it gets; `run.sh` gives them 25 s.
use burn::tensor::{Tensor, TensorPrimitive};
use burn_collective::{AllReduceStrategy, CollectiveConfig, PeerId, ReduceOperation};
type B = burn_flex::Flex;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args[1].as_str() {
        "orch" => {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(burn_collective::start_global_orchestrator(args[2].parse().unwrap()));
        }
        "node" => {
            let rank: u32 = args[2].parse().unwrap();
            let orch_port: u16 = args[3].parse().unwrap();
            let data_port: u16 = args[4].parse().unwrap();
            let strategy = match args[5].as_str() {
                "ring" => AllReduceStrategy::Ring,
                "tree" => AllReduceStrategy::Tree(2),
                _ => AllReduceStrategy::Centralized,
            };
            let config = CollectiveConfig::default()
                .with_num_devices(1)
                .with_num_nodes(2)
                .with_global_address(format!("ws://127.0.0.1:{orch_port}").parse().unwrap())
                .with_node_address(format!("ws://127.0.0.1:{data_port}").parse().unwrap())
                .with_data_service_port(data_port)
                .with_global_all_reduce_strategy(strategy);
            let device = Default::default();
            burn_collective::register::<B>(PeerId(rank), device, config).unwrap();
            eprintln!("node {rank}: registered");
            for i in 0..5 {
                let t = Tensor::<B, 1>::from_floats([rank as f32 + 1.0, i as f32, 1.0, 2.0], &device);
                let r =
                    burn_collective::all_reduce::<B>(PeerId(rank), t.into_primitive().tensor(), ReduceOperation::Sum)
                        .unwrap();
                let r = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(r));
                eprintln!("node {rank}: all-reduce {i} -> {:?}", r.into_data().to_vec::<f32>().unwrap());
            }
            burn_collective::finish_collective::<B>(PeerId(rank)).unwrap();
            eprintln!("node {rank}: done");
        }
        _ => panic!(),
    }
}
