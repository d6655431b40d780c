//! The process's runtime (`nomyo_core::runtime`): one per process, and a new one in a forked
//! child, whose parent's worker threads do not exist.

use std::sync::mpsc;
use std::time::Duration;

use nomyo_core::runtime;

/// Run a task on the process's runtime and wait for the name of the thread it ran on.
fn ran_on() -> String {
    let (tx, rx) = mpsc::channel();
    runtime::spawn(async move {
        let _ = tx.send(std::thread::current().name().map(str::to_owned));
    })
    .unwrap();
    rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap()
}

#[test]
fn one_runtime_per_process_and_a_new_one_in_a_forked_child() {
    assert_eq!(ran_on(), "nomyo-io");

    // SAFETY: the child only runs this test's code and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // The parent's runtime would take the task and never run it (its workers are gone).
        let works = std::panic::catch_unwind(ran_on).is_ok_and(|name| name == "nomyo-io");
        // SAFETY: leaving the child without running the parent's destructors or harness.
        unsafe { libc::_exit(if works { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for the child forked above.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "the child did not exit: {status}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "the child's runtime did not work"
    );
    assert_eq!(ran_on(), "nomyo-io", "the parent's runtime still works");
}
