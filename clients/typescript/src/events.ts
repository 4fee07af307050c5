// What `/v1/stream` sends, as types, and the guards that tell its events apart.

/** Job event types: what became of one of the tenant's jobs. */
export type JobEventType = "job.succeeded" | "job.retrying" | "job.dead" | "job.expired" | "job.progress";

/** The event types `/v1/stream` sends for jobs and batches (domain events such as
 * `calendar.conflict.detected` or `comms.entry.created` come on top). */
export const JOB_AND_BATCH_TYPES: readonly string[] = [
  "job.succeeded",
  "job.retrying",
  "job.dead",
  "job.expired",
  "job.progress",
  "batch.progress",
];

/** A job's progress, as its handler last reported it. */
export interface Progress {
  /** 0 to 100. */
  percent: number;
  done?: number;
  total?: number;
  message: string;
  /** ms since the epoch. */
  at: number;
}

/** What became of one job (`job.*`), or a domain event of the tenant. */
export interface TenantEvent {
  type: string;
  /** Queue (absent for domain events). */
  queue?: string;
  /** Job id, or the domain event's stable id. */
  id: string;
  /** Job kind (absent for domain events). */
  kind?: string;
  /** The attempt that ended this way. */
  attempt?: number;
  /** The job's batch, if any. */
  batch?: string;
  /** When it was recorded (ms since the epoch). */
  at: number;
  /** `job.progress`: the progress; a domain event: its payload. */
  data?: unknown;
}

/** A batch's counters (`batch.progress`), sent after the job events that changed them. */
export interface BatchProgress {
  id: string;
  queue: string;
  total: number;
  succeeded: number;
  failed: number;
  pending: number;
  /** No job of the batch is pending any more. */
  finished: boolean;
}

/** One event of a stream. */
export interface StreamEvent {
  /** The SSE event name: `job.succeeded`, `batch.progress`, `calendar.conflict.detected`, ... */
  type: string;
  /** The event's id (job and domain events): pass it as `after` to resume after it. */
  eventId: string | undefined;
  /** The event's JSON. */
  data: unknown;
}

/** Whether `e` tells what became of a job; `data` is then a {@link TenantEvent} with queue and kind. */
export function isJobEvent(e: StreamEvent): e is StreamEvent & { type: JobEventType; data: TenantEvent } {
  return e.type.startsWith("job.");
}

/** Whether `e` carries a batch's counters. */
export function isBatchProgress(e: StreamEvent): e is StreamEvent & { type: "batch.progress"; data: BatchProgress } {
  return e.type === "batch.progress";
}

/** A {@link StreamEvent} from an SSE event's name, id and data (JSON; kept as text if it is not). */
export function toStreamEvent(type: string, eventId: string | undefined, text: string): StreamEvent {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    data = text;
  }
  return { type, eventId: eventId || undefined, data };
}
