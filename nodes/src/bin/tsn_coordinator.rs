use tsn_nodes::coordinator::{bind, run, CoordinatorOpts};

fn main() -> anyhow::Result<()> {
    tsn_nodes::common::node_main(|o: &CoordinatorOpts| (&o.common, &o.node), bind, run)
}
