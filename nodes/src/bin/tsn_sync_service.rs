use clap::Parser;
use tsn_nodes::sync::{run, SyncOpts};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let opts = SyncOpts::parse();
    tsn_nodes::common::init_tracing(&opts.common.log);
    run(opts).await
}
