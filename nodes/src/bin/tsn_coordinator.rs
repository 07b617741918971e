use clap::Parser;
use tsn_nodes::coordinator::{run, CoordinatorOpts};

fn main() -> anyhow::Result<()> {
    let opts = CoordinatorOpts::parse();
    tsn_nodes::common::init_tracing(&opts.common.log);
    opts.node.runtime()?.block_on(run(opts))
}
