//! The walking skeleton: the entire session lifecycle over in-memory ports, through the same
//! `App` and tokio session host the server uses — authenticate, create, spawn, dial-back, prompt,
//! streamed reply, tool call, completion, a second prompt through the queue, reconnect with replay,
//! and both runs in the ledger exactly once.

use std::sync::Arc;
use switchboard_core::protocol::client::ControlFrame;
use switchboard_core::protocol::{
    Event, SandboxStatus, ServerFrame, ServerToSandbox, SessionStatus, TerminalStatus,
};
use switchboard_core::run::Price;
use switchboard_core::session::SessionConfig;
use switchboard_core::ModelRef;
use switchboard_fakes::price_book::InMemoryPriceBook;
use switchboard_server::journey::{journey, BYOK_KEY, MODEL};
use switchboard_server::stack::InMemoryStack;

fn events(frames: &[ServerFrame]) -> Vec<&switchboard_core::protocol::EventEnvelope> {
    frames
        .iter()
        .filter_map(|f| {
            if let ServerFrame::Event(e) = f {
                Some(e)
            } else {
                None
            }
        })
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn the_whole_lifecycle_over_fakes() {
    let price = Price {
        input_per_mtok_micros: 400_000,
        output_per_mtok_micros: 1_600_000,
    };
    let prices = InMemoryPriceBook::new().with_price(ModelRef::parse(MODEL).unwrap(), price);
    let stack = InMemoryStack::new(SessionConfig::default(), Arc::new(prices));
    let t = journey(&stack, |_| {})
        .await
        .expect("the journey completes");

    // Authenticated and created.
    assert_eq!(t.principal.org(), &t.org.org_id);
    assert_eq!(t.session.status, SessionStatus::Provisioning);
    assert_eq!(t.session.model.to_string(), MODEL);

    // The first client: hello first, then gap-free seqs from 1.
    assert!(
        matches!(
            &t.first_client[0],
            ServerFrame::Control(ControlFrame::Hello { .. })
        ),
        "{:?}",
        t.first_client[0]
    );
    let first = events(&t.first_client);
    let seqs: Vec<u64> = first.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "seqs start at 1 with no gap or repeat"
    );
    let types: Vec<&str> = first.iter().map(|e| e.event.type_name()).collect();
    assert!(
        types.contains(&"sandbox.status")
            && types.contains(&"tool_call")
            && types.contains(&"tool_result")
    );
    assert!(first.iter().any(|e| matches!(
        e.event,
        Event::SandboxStatus {
            status: SandboxStatus::Connected,
            ..
        }
    )));

    // Queue: the second prompt waited behind the first.
    assert_eq!(
        t.queued.iter().map(|q| q.position).collect::<Vec<_>>(),
        vec![0, 1]
    );
    let started: Vec<_> = first
        .iter()
        .filter(|e| e.event.type_name() == "run.started")
        .map(|e| e.run_id.clone().unwrap())
        .collect();
    assert_eq!(
        started,
        vec![t.queued[0].run_id.clone(), t.queued[1].run_id.clone()],
        "runs start in FIFO order"
    );
    let first_done = first
        .iter()
        .position(|e| e.event.type_name() == "execution_complete")
        .unwrap();
    let second_start = first
        .iter()
        .position(|e| {
            e.event.type_name() == "run.started" && e.run_id.as_ref() == Some(&t.queued[1].run_id)
        })
        .unwrap();
    assert!(
        first_done < second_start,
        "one run in flight: the second starts after the first completes"
    );

    // Streamed reply and completion, with cost from the price book.
    let reply: String = first
        .iter()
        .filter(|e| e.run_id.as_ref() == Some(&t.queued[0].run_id))
        .filter_map(|e| {
            if let Event::MessageDelta { text } = &e.event {
                Some(text.as_str())
            } else {
                None
            }
        })
        .collect();
    assert_eq!(reply, "Hello! The workspace holds README.md and src/.");
    let complete = &first[first_done];
    assert!(complete.critical);
    match &complete.event {
        Event::ExecutionComplete {
            status,
            usage,
            cost_micros,
            ..
        } => {
            assert_eq!(*status, TerminalStatus::Completed);
            assert_eq!(*cost_micros, price.cost_micros(*usage));
            assert!(*cost_micros > 0);
        }
        other => panic!("not a completion: {other:?}"),
    }

    // BYOK: the sandbox got the tenant's key for each run, and the model.
    assert_eq!(t.run_frames.len(), 2);
    for f in &t.run_frames {
        let ServerToSandbox::Run { gateway, model, .. } = f else {
            unreachable!()
        };
        assert_eq!(gateway.api_key.as_deref(), Some(BYOK_KEY));
        assert_eq!(model.to_string(), MODEL);
    }

    // Reconnect with `after`: exactly the later events, in order, once each.
    let resumed = events(&t.resumed_client);
    let expected: Vec<u64> = seqs
        .iter()
        .copied()
        .filter(|s| *s > t.resumed_after)
        .collect();
    let got: Vec<u64> = resumed.iter().map(|e| e.seq).collect();
    assert_eq!(got, expected, "replay after {} is exact", t.resumed_after);
    for e in &resumed {
        let original = first.iter().find(|o| o.seq == e.seq).unwrap();
        assert_eq!(*e, *original, "a replayed event equals the live one");
    }

    // The ledger holds both runs exactly once, attributed, with their events in seq order.
    assert_eq!(stack.ledger.len(), 2, "each run recorded exactly once");
    for (run, queued) in t.runs.iter().zip(&t.queued) {
        assert_eq!(run.run_id, queued.run_id);
        assert_eq!(run.status, TerminalStatus::Completed);
        assert_eq!(run.org_id, t.org.org_id);
        assert_eq!(run.user_id, t.org.user_id);
        assert_eq!(run.api_key_id.as_ref(), t.principal.api_key_id());
        assert_eq!(run.provider, "openai");
        let run_seqs: Vec<u64> = run.events.iter().map(|e| e.seq).collect();
        assert!(
            run_seqs.windows(2).all(|w| w[0] < w[1]),
            "ledger events in seq order"
        );
        assert_eq!(run.event_count as usize, run.events.len());
        assert_eq!(
            run.events.last().unwrap().event.type_name(),
            "execution_complete"
        );
        let live: Vec<_> = first
            .iter()
            .filter(|e| e.run_id.as_ref() == Some(&run.run_id))
            .map(|e| (*e).clone())
            .collect();
        assert_eq!(
            run.events, live,
            "the ledger's events are the streamed events"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn another_org_cannot_see_the_session_or_its_runs() {
    let stack = InMemoryStack::with_defaults();
    let t = journey(&stack, |_| {})
        .await
        .expect("the journey completes");
    let other = stack.app.create_org("Other", None).await.unwrap();
    let intruder = stack
        .app
        .authenticate(Some(&format!("Bearer {}", other.api_key)))
        .await
        .unwrap();
    let sid = t.session.id.to_string();
    assert_eq!(
        stack.app.session(&intruder, &sid).await.unwrap_err().status,
        404
    );
    assert_eq!(
        stack
            .app
            .events(&intruder, &sid, 0, 10)
            .await
            .unwrap_err()
            .status,
        404
    );
    assert_eq!(
        stack
            .app
            .attach(&intruder, &sid, None)
            .await
            .err()
            .unwrap()
            .status,
        404
    );
    assert_eq!(
        stack
            .app
            .run(&intruder, t.runs[0].run_id.as_str())
            .await
            .unwrap_err()
            .status,
        404
    );
    assert!(stack
        .app
        .runs(&intruder, None, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(stack.app.sessions(&intruder).await.unwrap().is_empty());
    assert_eq!(
        stack
            .app
            .authenticate(Some("Bearer sk_not_a_key"))
            .await
            .unwrap_err()
            .status,
        401
    );
    assert_eq!(stack.app.authenticate(None).await.unwrap_err().status, 401);
}
