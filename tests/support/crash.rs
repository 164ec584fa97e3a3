//! The crash part of the conformance suite, for every backend. First at fixed points:
//! skyform is killed (`SKYFORM_CRASH_AFTER=KIND:K`, see `src/faults.rs`) right after the
//! K-th backend call or state write of an `apply`, and of a `destroy`, for every K that run
//! reaches. Then at random moments: `kill -9` of an apply and of a destroy somewhere within
//! the time a clean apply takes, `SKYFORM_KILL_ROUNDS` times (3 by default; the seed is
//! printed, `SKYFORM_KILL_SEED` replays it; `scripts/kill-rounds.sh` runs many, with
//! `SKYFORM_CRASH_POINTS=0` to leave the fixed points out). After each
//! crash the same command again must converge: after apply exactly the declared things
//! exist and a new plan has nothing to do, after destroy nothing does, state is empty and
//! no process of the configuration (skyform, agents, jobs) is left.

use super::Workdir;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

/// A configuration ready in `dir` and a way to see what of it exists in the backend.
pub struct Crashes<'a> {
    pub dir: &'a Workdir,
    /// What exists in the backend now that this configuration made, one line per thing (a
    /// held host, an instance, a pod, an agent process…), read from the backend itself.
    pub world: &'a dyn Fn() -> Vec<String>,
    /// The kinds of crash point to try, each with the step between the Ks tried (1: every
    /// K; larger for kinds with many points, such as a pool's remote commands).
    pub kinds: &'a [(&'a str, u64)],
    /// At least this many fixed points must be reached (a backend that makes no calls
    /// would pass trivially).
    pub min_points: usize,
}

/// Whether `pid` is an ssh master connection (`ssh … -M …`).
fn is_ssh_master(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
        args.first().is_some_and(|a| a.ends_with(b"ssh")) && args.contains(&b"-M".as_slice())
    })
}

/// How one crashing run ended: killed at its crash point, or done before reaching it.
fn crashed(c: &Crashes, args: &[&str], kind: &str, k: u64) -> bool {
    let out = c
        .dir
        .command(args)
        .env("SKYFORM_CRASH_AFTER", format!("{kind}:{k}"))
        .output()
        .expect("skyform runs");
    if out.status.signal() == Some(9) {
        return true;
    }
    assert!(
        out.status.success(),
        "skyform {args:?} with a crash after {kind} {k} failed instead of crashing or finishing:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

impl Crashes<'_> {
    /// Applies cleanly: answers what exists then, after checking a plan has nothing to do.
    fn converged_up(&self, after: &str) -> Vec<String> {
        self.dir.ok(&["apply", "-auto-approve"]);
        let out = self.dir.output(&["plan", "-detailed-exitcode"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "after {after} and a second apply, the plan still has changes:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (self.world)()
    }

    /// Destroys cleanly and checks nothing is left, in the backend, in state or running.
    fn converged_down(&self, after: &str) {
        self.dir.ok(&["destroy", "-auto-approve"]);
        let left = (self.world)();
        assert!(left.is_empty(), "after {after} and destroy, left: {left:?}");
        let listed = self.dir.ok(&["state", "list"]);
        assert!(
            listed.trim().is_empty(),
            "after {after} and destroy, state lists:\n{listed}"
        );
        // ssh master connections a killed run left end on their own once idle (15 s); the
        // pool's test checks that at its end. A command of the killed run still in flight
        // (an ssh client waiting for its remote end) may take a moment to end.
        let running = || -> Vec<u32> {
            self.dir
                .processes()
                .into_iter()
                .filter(|pid| !is_ssh_master(*pid))
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !running().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        let left: Vec<String> = running()
            .into_iter()
            .map(|pid| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                format!(
                    "{pid}: {}",
                    String::from_utf8_lossy(&cmd).replace('\0', " ")
                )
            })
            .collect();
        assert!(
            left.is_empty(),
            "after {after} and destroy, processes of the configuration still run: {left:#?}"
        );
    }

    /// The random kills, then every crash point of apply and of destroy, each followed by
    /// the same command.
    pub fn run(&self) {
        let t = Instant::now();
        let declared = self.converged_up("a clean start").len();
        let window = t.elapsed();
        assert!(declared > 0, "a clean apply made nothing the test can see");
        self.converged_down("a clean apply");
        self.random_kills(declared, window);
        let mut tried = 0;
        // `scripts/kill-rounds.sh` runs the random rounds alone.
        let points = std::env::var("SKYFORM_CRASH_POINTS").map_or(true, |v| v != "0");
        for &(kind, step) in self.kinds.iter().filter(|_| points) {
            let mut k = 1;
            while crashed(self, &["apply", "-auto-approve"], kind, k) {
                tried += 1;
                let after = format!("apply killed after {kind} {k}");
                let now = self.converged_up(&after);
                assert_eq!(now.len(), declared, "{after}, then apply: {now:?}");
                self.converged_down(&after);
                k += step;
            }
            self.converged_down(&format!("apply with every {kind} point passed"));
            let mut k = 1;
            loop {
                self.dir.ok(&["apply", "-auto-approve"]);
                if !crashed(self, &["destroy", "-auto-approve"], kind, k) {
                    let left = (self.world)();
                    assert!(left.is_empty(), "destroy finished, left: {left:?}");
                    break;
                }
                tried += 1;
                self.converged_down(&format!("destroy killed after {kind} {k}"));
                k += step;
            }
        }
        assert!(
            !points || tried >= self.min_points,
            "only {tried} crash points were reached, {} expected",
            self.min_points
        );
    }
}

impl Crashes<'_> {
    /// Rounds of `kill -9` at a random moment of an apply and then of a destroy (within
    /// `window`, about what a clean apply takes), each followed by the same command.
    fn random_kills(&self, declared: usize, window: Duration) {
        let mut moments = Moments::from_env("random kills");
        let (rounds, seed) = (moments.rounds, moments.seed);
        eprintln!("random kills within {window:?}");
        let mut at = || moments.within(window.mul_f64(1.2));
        for round in 1..=rounds {
            let delay = at();
            self.kill_at(&["apply", "-auto-approve"], delay);
            let after = format!("apply killed after {delay:?} (round {round}, seed {seed})");
            let now = self.converged_up(&after);
            assert_eq!(now.len(), declared, "{after}, then apply: {now:?}");
            let delay = at();
            self.kill_at(&["destroy", "-auto-approve"], delay);
            self.converged_down(&format!(
                "destroy killed after {delay:?} (round {round}, seed {seed})"
            ));
        }
    }

    /// Starts skyform with `args` and kills it with SIGKILL after `delay` (a run that ends
    /// first must have succeeded).
    fn kill_at(&self, args: &[&str], delay: Duration) {
        let mut child = self
            .dir
            .command(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("skyform starts");
        let t = Instant::now();
        while t.elapsed() < delay {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(status.success(), "skyform {args:?} failed before the kill");
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Random moments for kill rounds, replayable: `SKYFORM_KILL_ROUNDS` rounds (3 by default),
/// from `SKYFORM_KILL_SEED` (else the clock; printed, so a failure can be replayed).
pub struct Moments {
    pub rounds: usize,
    pub seed: u64,
    rng: u64,
}

impl Moments {
    /// The rounds and seed of this run; says them (as `what`) on stderr.
    pub fn from_env(what: &str) -> Moments {
        let rounds: usize = std::env::var("SKYFORM_KILL_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(3);
        let seed: u64 = std::env::var("SKYFORM_KILL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("{what}: {rounds} rounds, SKYFORM_KILL_SEED={seed} replays them");
        Moments {
            rounds,
            seed,
            rng: seed | 1,
        }
    }

    /// The next number (xorshift64: enough to spread the kills, and replayable).
    pub fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// A moment within `window`.
    pub fn within(&mut self, window: Duration) -> Duration {
        window.mul_f64((self.next() % 10_000) as f64 / 10_000.0)
    }
}
