use clap::Parser;
use tsn_nodes::server::{run, ServerOpts};

fn main() -> anyhow::Result<()> {
    let opts = ServerOpts::parse();
    tsn_nodes::common::init_tracing(&opts.common.log);
    opts.node.runtime()?.block_on(run(opts))
}
