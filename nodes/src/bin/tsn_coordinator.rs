use clap::Parser;
use tsn_nodes::coordinator::{run, CoordinatorOpts};

fn main() -> anyhow::Result<()> {
    let opts = CoordinatorOpts::parse();
    opts.common.init_tracing();
    opts.node
        .runtime()?
        .block_on(run(opts, tsn_nodes::common::shutdown_signal()))
}
