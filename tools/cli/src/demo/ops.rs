//! The ops agent: a latency alert traced to a deploy, rolled back, and handled as an incident.

use serde_json::json;

use super::script::{Script, call};

pub(super) struct Service {
    name: &'static str,
    region: &'static str,
    team: &'static str,
    bad: &'static str,
    good: &'static str,
    owner: &'static str,
}

pub(super) const SERVICES: [Service; 3] = [
    Service {
        name: "checkout",
        region: "eu-west-1",
        team: "payments",
        bad: "v2.41.0",
        good: "v2.40.3",
        owner: "maria",
    },
    Service { name: "search", region: "us-east-2", team: "discovery", bad: "v5.8.0", good: "v5.7.2", owner: "kenji" },
    Service {
        name: "auth",
        region: "ap-southeast-1",
        team: "identity",
        bad: "v1.19.0",
        good: "v1.18.4",
        owner: "oluwaseun",
    },
];

pub(super) fn play(s: &mut Script, v: &Service, idx: u32) {
    let (svc, region, team, bad, good, owner) = (v.name, v.region, v.team, v.bad, v.good, v.owner);
    let incident = format!("INC-{}", 2300 + idx);
    s.system(format!(
        "You are the on-call assistant for the {team} team. You can read metrics, logs and deploy history, run \
         kubectl, roll back deployments when asked, and manage incidents. Prefer the smallest safe action, say what \
         you are about to do before changing production, and keep the incident channel updated."
    ));

    s.user(format!("Alert: {svc} p99 latency above 2 s in {region} for 10 minutes. Can you take a look?"));
    s.tools(
        "Pulling latency and error rate for the last hour.",
        vec![
            call(
                "query_metrics",
                json!({"service": svc, "region": region, "metric": "latency_p99_ms", "window": "1h"}),
                "13:30-14:00 310-340 ms; 14:05 1870 ms; 14:10-14:35 2300-2900 ms",
            ),
            call(
                "query_metrics",
                json!({"service": svc, "region": region, "metric": "error_rate", "window": "1h"}),
                "13:30-14:00 0.04%; 14:05-14:35 1.8-2.6%, mostly 504 upstream timeout",
            ),
        ],
    );
    s.tools(
        "Both jump at about 14:05. Checking what was deployed.",
        vec![call(
            "get_deploys",
            json!({"service": svc, "region": region, "since": "13:00"}),
            format!("14:02 {svc} {bad} by {owner} (rolling, 12/12 pods ready)\n11:47 {svc}-worker v3.2.1 by ci-bot"),
        )],
    );
    s.tools(
        "",
        vec![call(
            "search_logs",
            json!({"service": svc, "region": region, "query": "level:warn slow_query", "since": "14:00", "limit": 3}),
            "14:06:12 WARN slow_query 412 ms: SELECT ... FROM items WHERE id = $1 (38 times in one request)\n14:06:12 \
             WARN slow_query 398 ms: same statement (41 times)\n14:06:13 WARN pool exhausted: 64/64 connections busy",
        )],
    );
    s.answer(format!(
        "Very likely {bad}, deployed at 14:02 by {owner}: latency and errors rise three minutes later, and the logs \
         show one query per item in each request (an N+1 pattern) exhausting the connection pool. I suggest rolling \
         {svc} in {region} back to {good}. Shall I?"
    ));

    s.user("Yes, roll it back.".to_string());
    s.tools(
        &format!("Rolling back {svc} in {region} to {good}."),
        vec![call(
            "kubectl",
            json!({"args": ["rollout", "undo", format!("deployment/{svc}"), "-n", team]}),
            format!("deployment.apps/{svc} rolled back"),
        )],
    );
    s.tools(
        "",
        vec![call(
            "kubectl",
            json!({"args": ["rollout", "status", format!("deployment/{svc}"), "-n", team, "--timeout=5m"]}),
            format!(
                "Waiting for deployment \"{svc}\" rollout to finish: 6 of 12 updated replicas are \
                 available...\ndeployment \"{svc}\" successfully rolled out"
            ),
        )],
    );
    s.answer(format!("Rollback complete: all 12 pods of {svc} run {good} again."));

    s.user("Is it recovering?".to_string());
    s.tools(
        "",
        vec![
            call(
                "query_metrics",
                json!({"service": svc, "region": region, "metric": "latency_p99_ms", "window": "15m"}),
                "14:40 1210 ms; 14:45 420 ms; 14:50 330 ms",
            ),
            call(
                "query_metrics",
                json!({"service": svc, "region": region, "metric": "error_rate", "window": "15m"}),
                "14:40 0.9%; 14:45 0.12%; 14:50 0.05%",
            ),
        ],
    );
    s.answer(
        "Yes. p99 is back to 330 ms and the error rate to 0.05%, both at their levels from before the deploy."
            .to_string(),
    );

    s.user("Open an incident and post a status update.".to_string());
    s.tools(
        "",
        vec![call(
            "create_incident",
            json!({"title": format!("{svc} latency and 504s in {region} after {bad}"), "severity": "SEV2", "service": svc}),
            json!({"id": incident, "channel": format!("#inc-{}", incident.to_lowercase()), "status": "open"}).to_string(),
        )],
    );
    s.tools(
        "",
        vec![call(
            "post_status",
            json!({"incident": incident, "message": format!("{svc} in {region}: elevated latency and errors from 14:05, mitigated 14:45 by rolling back {bad}. Monitoring.")}),
            format!("posted to #inc-{} and to the status page ({svc}, {region})", incident.to_lowercase()),
        )],
    );
    s.answer(format!("{incident} is open (SEV2) and the status update is posted, marked as mitigated and monitoring."));

    s.user("Draft a timeline for the postmortem.".to_string());
    s.tools(
        "",
        vec![call(
            "search_logs",
            json!({"service": "pagerduty", "query": format!("service:{svc} region:{region}"), "since": "14:00"}),
            "14:12 alert triggered: p99 > 2 s for 5 min\n14:13 acknowledged by on-call",
        )],
    );
    s.answer(format!(
        "Timeline (UTC):\n- 14:02 {bad} deployed to {region}\n- 14:05 p99 latency and 504s start rising\n- 14:12 alert \
         fires; 14:13 acknowledged\n- 14:20 cause identified: N+1 queries exhausting the connection pool\n- 14:38 \
         rollback to {good} started; 14:44 complete\n- 14:50 latency and errors back to baseline\nFollow-ups: a load \
         test that counts queries per request; alert on pool saturation."
    ));

    s.user(format!("Let {owner} know, gently. It's their change."));
    s.tools(
        "",
        vec![call(
            "send_message",
            json!({"to": owner, "text": format!("Hi {owner}, heads-up: we rolled {svc} in {region} back from {bad} to {good} at 14:38; it issued one query per item under load. Details in {incident}. Happy to pair on a fix.")}),
            "delivered",
        )],
    );
    s.answer(format!("Sent {owner} a short, friendly note with the incident link and an offer to pair on the fix."));

    s.user("Close the incident once the error rate stays under 0.1% for 30 minutes.".to_string());
    s.tools(
        "",
        vec![call(
            "query_metrics",
            json!({"service": svc, "region": region, "metric": "error_rate", "window": "30m"}),
            "max 0.06%, mean 0.04% over the last 30 minutes",
        )],
    );
    s.tools(
        "Under 0.1% for the full 30 minutes. Resolving.",
        vec![call("update_incident", json!({"id": incident, "status": "resolved"}), format!("{incident} resolved"))],
    );
    s.answer(format!(
        "{incident} is resolved: the error rate peaked at 0.06% over the last 30 minutes. The postmortem draft is in \
         the incident channel."
    ));
}

/// What the user and agent say once the incident is closed: the demo appends it while the
/// session is being compacted.
pub(super) fn follow_up(s: &mut Script, v: &Service) {
    let (svc, region, owner) = (v.name, v.region, v.owner);
    s.user(format!("{owner} has a fix ready. What should we watch when they redeploy {svc}?"));
    s.tools(
        "Getting today's baseline first.",
        vec![call(
            "query_metrics",
            json!({"service": svc, "region": region, "metric": "latency_p99_ms", "window": "3h"}),
            "min 290 ms, median 320 ms, max 350 ms since the rollback",
        )],
    );
    s.answer(format!(
        "Roll it out to one pod first and watch p99 against today's baseline of about 320 ms, plus the database query \
         rate per request, which is what spiked last time. If both hold for 15 minutes, continue the rollout in \
         {region}."
    ));
    s.user("Good plan, I'll pass it on. Thanks.".to_string());
    s.answer(format!("Anytime. I'll keep an eye on {svc} in {region} during the redeploy if you ping me."));
}
