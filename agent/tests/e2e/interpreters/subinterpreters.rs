//! Subinterpreters with their own GIL (3.12+; pyenv 3.12/3.13 and Debian sid's
//! 3.14): every GIL of the process is found, and waits land on the GIL they were for.

use crate::common::*;

#[test]
fn each_subinterpreter_gil_is_found_and_waits_land_on_the_right_one() {
    if !can_use_bpf() {
        return;
    }
    let pythons = pyenv_matrix()
        .into_iter()
        .filter(|(l, _, _)| l == "3.12" || l == "3.13")
        .map(|(line, python, _)| (line, python))
        .chain(debian_python314().map(|python| ("Debian 3.14".to_string(), python)));
    for (line, python) in pythons {
        let _machine = serial();
        // Three threads are runnable at once: the main GIL's holder and one per
        // subinterpreter; on two cores they explain one wall of run-queue wait.
        let doc = check_workload_uncrowded(&python, "subinterpreters.py", &["4"], 3.0, |d| {
            f(&d["process"], "effective_parallelism") >= 1.5
        });
        let wall = f(&doc["process"], "wall_s");
        let gils = doc["gils"].as_array().expect("gils");
        assert_eq!(
            gils.len(),
            3,
            "{line}: main + two isolated subinterpreters: {gils:?}"
        );
        assert_eq!(gils[0]["main"], true);
        // Two threads share the main GIL: together they wait about one wall time.
        let main_wait = f(&gils[0], "gil_wait_s") / wall;
        assert!(
            (0.6..=1.3).contains(&main_wait),
            "{line}: main GIL wait {main_wait:.2} of wall: {gils:?}"
        );
        for sub in &gils[1..] {
            assert!(
                f(sub, "gil_wait_s") < 0.05 * wall,
                "{line}: a lone thread never waits for its own GIL: {sub}"
            );
        }
        assert!(
            f(&doc["process"], "effective_parallelism") >= 1.5,
            "{line}: {}",
            doc["process"]
        );
    }
}
