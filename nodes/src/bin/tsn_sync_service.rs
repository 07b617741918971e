use clap::Parser;
use tsn_nodes::sync::{run, SyncOpts};

fn main() -> anyhow::Result<()> {
    let opts = SyncOpts::parse();
    opts.common.init_tracing();
    opts.node
        .runtime()?
        .block_on(run(opts, tsn_nodes::common::shutdown_signal()))
}
