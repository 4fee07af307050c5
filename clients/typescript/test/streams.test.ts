import assert from "node:assert/strict";
import { test } from "node:test";
import { EventSource } from "eventsource";
import { Fleet, FleetError, isBatchProgress, isJobEvent, streamWithToken, type StreamEvent } from "../src/index.js";
import { openEventStream } from "../src/browser.js";
import { baseUrl, eventually, fleet, otherFleet, unique, within } from "./harness.js";

/** Collects `events` until `done` says so (or fails after `ms`). */
async function collect(
  ms: number,
  what: string,
  events: AsyncIterable<StreamEvent>,
  done: (e: StreamEvent) => boolean,
): Promise<StreamEvent[]> {
  const seen: StreamEvent[] = [];
  return within(
    ms,
    what,
    (async () => {
      for await (const event of events) {
        seen.push(event);
        if (done(event)) return seen;
      }
      throw new Error(`the stream ended before ${what}; seen: ${JSON.stringify(seen)}`);
    })(),
  ).catch((e: unknown) => {
    throw new Error(`${String(e)}; seen: ${JSON.stringify(seen.map((s) => [s.type, (s.data as { id?: string }).id]))}`);
  });
}


test("a stream token opens the tenant's stream and receives its job's events, without seeing another tenant's", async () => {
  const { token, expires_at } = await fleet.streams.createToken({ ttl_secs: 120 });
  assert.match(token, /^fst_/);
  assert.ok(expires_at > Date.now() && expires_at <= Date.now() + 121_000);
  const stop = new AbortController();
  // From the first kept event: the stream is open before or after the jobs, whichever wins.
  const events = streamWithToken(baseUrl, token, { signal: stop.signal, after: "0" });
  const theirs = await otherFleet.jobs.enqueue({ kind: "probe", args: { do: "succeed" } });
  await otherFleet.jobs.wait(theirs.queue, theirs.id, { timeoutMs: 20_000 });
  const ours = await fleet.jobs.enqueue({ kind: "probe", args: { do: "succeed", tag: unique("stream") } });
  try {
    const seen = await collect(20_000, `job.succeeded of ${ours.id}`, events, (e) => isJobEvent(e) && e.data.id === ours.id && e.type === "job.succeeded");
    const last = seen.at(-1)!;
    assert.ok(isJobEvent(last));
    assert.equal(last.data.kind, "probe");
    assert.equal(last.data.queue, "default");
    assert.match(last.eventId ?? "", /^\d+-\d+$/);
    assert.ok(!seen.some((e) => isJobEvent(e) && e.data.id === theirs.id), "no event of the other tenant's job");
  } finally {
    stop.abort();
  }
});

test("a token scoped to a batch sees that batch's events and its progress, not the tenant's other jobs", async () => {
  const batch = await fleet.batches.create({
    jobs: [{ kind: "probe", args: { do: "sleep", ms: 300 } }, { kind: "probe", args: { do: "sleep", ms: 300 } }],
  });
  const { token } = await fleet.streams.createToken({ batches: [batch.id] });
  const stop = new AbortController();
  const events = streamWithToken(baseUrl, token, { signal: stop.signal, after: "0" });
  const outside = await fleet.jobs.enqueue({ kind: "probe", args: { do: "succeed" } });
  try {
    // Progress carries the counters when it is sent, so `finished` may come before the
    // second job's own event: wait for both.
    let succeeded = 0;
    let finished = false;
    const seen = await collect(20_000, "both jobs' events and the batch's finished progress", events, (e) => {
      if (e.type === "job.succeeded") succeeded += 1;
      if (isBatchProgress(e) && e.data.finished) finished = true;
      return succeeded === 2 && finished;
    });
    const jobs = seen.filter(isJobEvent);
    assert.ok(jobs.every((e) => e.data.batch === batch.id), "only the batch's jobs");
    assert.ok(!jobs.some((e) => e.data.id === outside.id));
    const progress = seen.filter(isBatchProgress).at(-1)!;
    assert.deepEqual(
      { total: progress.data.total, succeeded: progress.data.succeeded, pending: progress.data.pending },
      { total: 2, succeeded: 2, pending: 0 },
    );
  } finally {
    stop.abort();
  }
});

test("the browser helper opens EventSource with a token and resumes with a fresh one after the first expired", async () => {
  let tokens = 0;
  const received: StreamEvent[] = [];
  const job = await fleet.jobs.enqueue({ kind: "probe", args: { do: "succeed", tag: unique("browser") } });
  await fleet.jobs.wait(job.queue, job.id, { timeoutMs: 20_000 });
  // The first token is expired by the time it is used: the helper must ask for another.
  const expired = await fleet.streams.createToken({ ttl_secs: 1 });
  await eventually(5_000, "the short token to expire", async () => (Date.now() > expired.expires_at ? true : undefined));
  const stream = openEventStream({
    baseUrl,
    EventSource,
    after: "0",
    token: async () => {
      tokens += 1;
      return tokens === 1 ? expired.token : (await fleet.streams.createToken({ ttl_secs: 60 })).token;
    },
    onEvent: (e) => received.push(e),
  });
  try {
    const event = await eventually(20_000, `job.succeeded of ${job.id} in the browser helper`, async () =>
      received.find((e) => isJobEvent(e) && e.data.id === job.id && e.type === "job.succeeded"),
    );
    assert.equal(tokens, 2, "one refused token, one fresh");
    assert.ok(event.eventId);
    assert.equal(stream.lastEventId, received.filter((e) => e.eventId !== undefined).at(-1)?.eventId);
  } finally {
    stream.close();
  }
});

test("a stream token enqueues nothing and reads nothing but the stream", async () => {
  const { token } = await fleet.streams.createToken({});
  const asKey = new Fleet({ baseUrl, apiKey: token });
  await assert.rejects(
    asKey.jobs.enqueue({ kind: "probe", args: { do: "succeed" } }),
    (e: unknown) => e instanceof FleetError && e.status === 401 && e.code === "unauthorized",
  );
  await assert.rejects(asKey.streams.createToken({}), (e: unknown) => e instanceof FleetError && e.status === 401);
  // Nor in the query string of another route.
  const res = await fetch(`${baseUrl}/v1/jobs?token=${encodeURIComponent(token)}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ kind: "probe", args: { do: "succeed" } }),
  });
  assert.equal(res.status, 401);
  assert.equal((await FleetError.read(res)).code, "unauthorized");
});

test("an altered or made-up token is refused with unauthorized", async () => {
  const { token } = await fleet.streams.createToken({});
  const altered = token.slice(0, -2) + (token.endsWith("A") ? "BB" : "AA");
  for (const bad of [altered, "fst_bm90IGEgdG9rZW4", "nonsense"]) {
    const events = streamWithToken(baseUrl, bad, { reconnect: false });
    await assert.rejects(
      events.next(),
      (e: unknown) => e instanceof FleetError && e.status === 401 && e.code === "unauthorized",
      bad,
    );
  }
});

test("the API-key stream follows the tenant's events from Node", async () => {
  const stop = new AbortController();
  const events = fleet.streams.events({ signal: stop.signal, after: "0" });
  const job = await fleet.jobs.enqueue({ kind: "probe", args: { do: "report", steps: 3 } });
  try {
    const seen = await collect(20_000, `job.succeeded of ${job.id}`, events, (e) => isJobEvent(e) && e.data.id === job.id && e.type === "job.succeeded");
    assert.ok(seen.some((e) => e.type === "job.progress" && isJobEvent(e) && e.data.id === job.id), "progress events too");
  } finally {
    stop.abort();
  }
});
