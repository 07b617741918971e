use clap::Parser;
use tsn_nodes::sync::{run, SyncOpts};

fn main() -> anyhow::Result<()> {
    let opts = SyncOpts::parse();
    tsn_nodes::common::init_tracing(&opts.common.log);
    opts.node.runtime()?.block_on(run(opts))
}
