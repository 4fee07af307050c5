// Server-sent events read with `fetch` (Node 20+ and browsers alike): the way to follow
// a stream where `EventSource` is missing (Node) or cannot send the API key (it never
// should in a browser: browsers use stream tokens, see `browser.ts`).
//
// One connection at a time; when it ends or fails on the network, the reader reconnects
// after the server's `retry` (or a second) and resumes after the last event id it saw, as
// EventSource does. An error answer (401, 404, 422, 429, ...) ends the iteration with a
// `FleetError`: retrying it blindly would not help.

import { createParser, type EventSourceMessage } from "eventsource-parser";
import { FleetError } from "./errors.js";
import { toStreamEvent, type StreamEvent } from "./events.js";

/** How to follow a stream. */
export interface ReadStreamOptions {
  /** Resume after this event id (`"0"`: every kept event); default: from the next event. */
  after?: string;
  /** Stops the stream (the iteration then simply ends). */
  signal?: AbortSignal;
  /** Reconnect when the connection drops (default true). */
  reconnect?: boolean;
  /** The `fetch` to use (default the global one). */
  fetch?: typeof globalThis.fetch;
}

/** Reads the SSE stream at `url` (with `headers`), yielding each event; see the module notes. */
export async function* readEventStream(
  url: string,
  headers: Record<string, string>,
  options: ReadStreamOptions = {},
): AsyncGenerator<StreamEvent, void, undefined> {
  const fetchFn = options.fetch ?? globalThis.fetch;
  let lastId = options.after;
  let retryMs = 1000;
  const signal = options.signal;
  while (!signal?.aborted) {
    const target = new URL(url);
    if (lastId !== undefined) target.searchParams.set("after", lastId);
    let response: Response;
    try {
      response = await fetchFn(target, { headers: { accept: "text/event-stream", ...headers }, signal });
    } catch (e) {
      if (signal?.aborted) return;
      if (options.reconnect === false) throw e;
      await pause(retryMs, signal);
      continue;
    }
    if (!response.ok) throw await FleetError.read(response);
    if (response.body === null) throw new FleetError(response.status, "bad_stream", "the stream has no body");
    const queue: EventSourceMessage[] = [];
    const parser = createParser({
      onEvent: (message) => queue.push(message),
      onRetry: (ms) => {
        retryMs = ms;
      },
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      for (;;) {
        const chunk = await reader.read();
        if (chunk.done) break;
        parser.feed(chunk.value);
        for (let message = queue.shift(); message !== undefined; message = queue.shift()) {
          if (message.id) lastId = message.id;
          yield toStreamEvent(message.event ?? "message", message.id, message.data);
        }
      }
    } catch (e) {
      if (signal?.aborted) return;
      if (options.reconnect === false) throw e;
    } finally {
      // Also runs when the consumer stops iterating: the connection is closed.
      reader.cancel().catch(() => {});
    }
    if (options.reconnect === false) return;
    await pause(retryMs, signal);
  }
}

/** Waits `ms`, or less when `signal` aborts. */
function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}
