use std::any::Any;

use simulator::timings::SEC;
use simulator::{Model, ModelId, Stop, TraceEvent, World};

use crate::sim;

/// A model that counts its wakes and the nodes it saw become Ready, and breaks its own invariant
/// at the fifth wake.
struct Counter {
    wakes: u64,
    ready_seen: u64,
    fail_at: u64,
}

impl Model for Counter {
    fn name(&self) -> &'static str {
        "counter"
    }
    fn start(&mut self, w: &mut World, me: ModelId) {
        w.wake(10 * SEC, me, 1);
    }
    fn on_wake(&mut self, w: &mut World, me: ModelId, tag: u64) {
        self.wakes += 1;
        w.trace_ext("counter", "wake", format!("tag {tag}"));
        let next = w.now() + 60 * SEC;
        w.wake(next, me, tag + 1);
    }
    fn observe(&mut self, _w: &mut World, _me: ModelId, ev: &TraceEvent) {
        if matches!(ev, TraceEvent::NodeReady { .. }) {
            self.ready_seen += 1;
        }
    }
    fn check(&self, _w: &World) -> Result<(), (String, String)> {
        if self.wakes >= self.fail_at {
            Err(("wakes-bounded".into(), format!("{} wakes", self.wakes)))
        } else {
            Ok(())
        }
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[test]
fn models_get_events_observe_the_cluster_and_their_violations_stop_the_run() {
    let mut s = sim("talos-unraid", 1);
    let id = s.add_model(Box::new(Counter {
        wakes: 0,
        ready_seen: 0,
        fail_at: 5,
    }));
    let stop = s.run_until(3600 * SEC);
    assert_eq!(stop, Stop::Violation);
    let v = s.violation().unwrap();
    assert_eq!(v.invariant, "counter:wakes-bounded");
    assert_eq!(v.at, 10 * SEC + 4 * 60 * SEC);
    assert!(v.event.contains("wake model#0 tag 5"), "{}", v.event);
    let c = s.model::<Counter>(id).unwrap();
    assert_eq!(c.wakes, 5);
    assert_eq!(c.ready_seen, 2, "both nodes seen Ready");
    assert!(matches!(
        s.trace().entries().last().unwrap().event,
        TraceEvent::Violation { .. }
    ));
}
