use clap::Parser;
use tsn_nodes::server::{run, ServerOpts};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let opts = ServerOpts::parse();
    tsn_nodes::common::init_tracing(&opts.common.log);
    run(opts).await
}
