use tsn_nodes::common::{node_main, shutdown_signal};
use tsn_nodes::coordinator::{run, CoordinatorOpts};

fn main() -> anyhow::Result<()> {
    node_main(
        |o: &CoordinatorOpts| (&o.common, &o.node),
        |opts| run(opts, shutdown_signal()),
    )
}
