mod common;
use bulwark_framework::sim::SimConfig;

#[test]
fn smoke() {
    let report = common::run_kv(SimConfig::new(1, 4));
    println!("{report}");
    common::assert_safe_and_converged(&report);
}
