use clap::Parser;
use tsn_nodes::coordinator::{run, CoordinatorOpts};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let opts = CoordinatorOpts::parse();
    tsn_nodes::common::init_tracing(&opts.common.log);
    run(opts).await
}
