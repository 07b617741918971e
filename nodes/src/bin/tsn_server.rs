use tsn_nodes::common::{node_main, shutdown_signal};
use tsn_nodes::server::{run, ServerOpts};

fn main() -> anyhow::Result<()> {
    node_main(
        |o: &ServerOpts| (&o.common, &o.node),
        |opts| run(opts, shutdown_signal()),
    )
}
