use clap::Parser;
use tsn_nodes::server::{run, ServerOpts};

fn main() -> anyhow::Result<()> {
    let opts = ServerOpts::parse();
    opts.common.init_tracing();
    opts.node
        .runtime()?
        .block_on(run(opts, tsn_nodes::common::shutdown_signal()))
}
