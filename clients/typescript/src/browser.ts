// The browser side of live streams: no API key here, only a stream token that the app's
// server made with `fleet.streams.createToken()`. `EventSource` cannot send headers, so
// the token travels in the URL (`/v1/stream?token=`); Fleet answers token streams with
// `Access-Control-Allow-Origin: *`, so a page on any origin can open them.
//
// EventSource reconnects by itself (sending `Last-Event-ID`, so nothing is missed) while
// the token is valid. Once it has expired the server refuses the reconnect and the browser
// gives up; when `token` is a function, a new token is fetched and the stream resumes
// after the last event seen.

import { JOB_AND_BATCH_TYPES, toStreamEvent, type StreamEvent } from "./events.js";

export { isBatchProgress, isJobEvent, JOB_AND_BATCH_TYPES } from "./events.js";
export type { BatchProgress, JobEventType, Progress, StreamEvent, TenantEvent } from "./events.js";

/** The parts of `EventSource` this module uses (so a polyfill or a test double fits). */
export interface EventSourceLike {
  readonly readyState: number;
  addEventListener(type: string, listener: (event: MessageEvent) => void): void;
  close(): void;
  onerror: ((this: any, event: Event) => any) | null;
  onopen: ((this: any, event: Event) => any) | null;
}

/** What to open and what to do with its events. */
export interface OpenEventStreamOptions {
  /** Fleet's public base URL, e.g. `https://fleet.example.com`. */
  baseUrl: string;
  /** A stream token, or a function that fetches a fresh one from the app's server (then an
   * expired token is replaced and the stream resumes where it was). */
  token: string | (() => Promise<string>);
  /** Called with every event, in order. */
  onEvent: (event: StreamEvent) => void;
  /** Event types to listen to (default: `job.*` and `batch.progress`; add domain types such
   * as `calendar.conflict.detected`). EventSource only delivers the names it listens to. */
  types?: readonly string[];
  /** Resume after this event id. */
  after?: string;
  /** Called when the connection is lost or a new token cannot be had. */
  onError?: (error: unknown) => void;
  /** Called each time the stream is open (again). */
  onOpen?: () => void;
  /** The EventSource constructor (default the browser's). */
  EventSource?: new (url: string) => EventSourceLike;
}

/** An open stream. */
export interface EventStream {
  /** The id of the last event seen (resume with it). */
  readonly lastEventId: string | undefined;
  /** Close it for good. */
  close(): void;
}

/** `EventSource.CLOSED`. */
const CLOSED = 2;

/** The URL of `/v1/stream` opened with a stream token (resuming after `after` if given). */
export function streamUrl(baseUrl: string, token: string, after?: string): string {
  const url = new URL(`${baseUrl.replace(/\/+$/, "")}/v1/stream`);
  url.searchParams.set("token", token);
  if (after !== undefined) url.searchParams.set("after", after);
  return url.toString();
}

/** Opens the tenant's stream with a token; see the module notes. */
export function openEventStream(options: OpenEventStreamOptions): EventStream {
  const Source =
    options.EventSource ?? (globalThis as { EventSource?: new (url: string) => EventSourceLike }).EventSource;
  if (Source === undefined) throw new TypeError("openEventStream: no EventSource here (pass options.EventSource)");
  const types = options.types ?? JOB_AND_BATCH_TYPES;
  let lastEventId = options.after;
  let source: EventSourceLike | undefined;
  let closed = false;
  let failures = 0;

  const open = (token: string) => {
    if (closed) return;
    const es = new Source(streamUrl(options.baseUrl, token, lastEventId));
    source = es;
    for (const type of types) {
      es.addEventListener(type, (message: MessageEvent) => {
        if (message.lastEventId) lastEventId = message.lastEventId;
        options.onEvent(toStreamEvent(type, message.lastEventId, String(message.data)));
      });
    }
    es.onopen = () => {
      failures = 0;
      options.onOpen?.();
    };
    es.onerror = (event: Event) => {
      options.onError?.(event);
      // Still CONNECTING: the browser retries by itself with Last-Event-ID. CLOSED: the
      // server refused (an expired token); only a fresh token helps.
      if (es.readyState === CLOSED && typeof options.token === "function" && !closed) {
        es.close();
        failures += 1;
        const wait = Math.min(1000 * 2 ** (failures - 1), 30_000);
        setTimeout(renew, failures === 1 ? 0 : wait);
      }
    };
  };

  const renew = () => {
    if (closed || typeof options.token !== "function") return;
    options.token().then(open, (error: unknown) => {
      options.onError?.(error);
      failures += 1;
      setTimeout(renew, Math.min(1000 * 2 ** (failures - 1), 30_000));
    });
  };

  if (typeof options.token === "string") open(options.token);
  else renew();

  return {
    get lastEventId() {
      return lastEventId;
    },
    close() {
      closed = true;
      source?.close();
    },
  };
}
