// Groups: N client processes taking part in one collective, each with its own buffer, as the ranks
// of an NCCL job do. A group forms when its last member joins (NCCL backend: its communicator is
// split from the world's, in ring order like a collective); each member's k-th collective is
// matched with the others' k-th, checked for agreement, and run as one Collective over the
// members' devices. A member that leaves or disconnects dissolves the group: nobody waits for a
// peer that is gone. A stall inspector warns when some members have sent collective k and others
// have not for longer than --stall-warn-ms.
import { ErrorCodes, NccldError, toNccldError } from '../shared/errors.js';
import { DTYPES } from '../shared/dtypes.js';
import { REDUCING, ROOTED, collectiveElements, isInPlacePair, type BufferSlot, type CollectiveRequest, type JoinRequest } from '../shared/protocol.js';
import { ClientProcess } from './client-process.js';
import { Collective, slotsOverlap, type CollectiveOwner, type Slot } from './collective.js';
import { requestTimeout } from './deadlines.js';
import type { FlightRecorder } from './flight-recorder.js';
import type { Logger } from './logger.js';
import type { Scheduler } from './scheduler.js';
import type { World } from './world.js';

/** What a group needs from the connection of each member. */
export interface MemberSession {
  readonly id: number;
  readonly process: ClientProcess;
  readonly peerPid: number | null;
  readonly clientName: string | null;
  /** The connection's group numbers: the group and this member. */
  readonly memberships: Map<number, Member>;
  /** Counts a request as unfinished (its id taken, its place in maxInFlight) until `settle`. */
  track(requestId: number): void;
  /** Answers a tracked request: frees its id. */
  reply(requestId: number, fields: Record<string, unknown> | NccldError): void;
  /** A tracked request's work has ended: its buffers and its place in maxInFlight are free. */
  settle(send?: Slot | null, recv?: Slot | null): void;
  /** Tells the client its collective is on every rank's stream (its doneEvent recorded). */
  sendLaunched(requestId: number): void;
}

export class Member {
  /** Collectives this member has sent: the next one is number `submitted`. */
  submitted = 0;
  joinTimer: NodeJS.Timeout | null = null;
  constructor(
    readonly group: Group,
    readonly session: MemberSession,
    readonly rank: number,
    readonly device: number,
    readonly joinId: number,
  ) {}
}

/** One member's k-th collective, waiting for the others'. */
interface Submission {
  member: Member;
  requestId: number;
  req: CollectiveRequest;
  send: Slot | null;
  recv: Slot | null;
  timer: NodeJS.Timeout | null;
  answered: boolean;
}

interface Round {
  k: number;
  subs: (Submission | undefined)[];
  arrived: number;
  firstAt: number;
  warnedAt: number;
}

export type GroupState = 'forming' | 'building' | 'live' | 'dissolved';

export class Group {
  state: GroupState = 'forming';
  readonly members: (Member | undefined)[];
  /** Collectives of this group finished on every rank. */
  done = 0;
  /** Why it was dissolved: what later requests on it are told. */
  reason: NccldError | null = null;
  /** NCCL: the communicator split for it (its number in the rank rings); 0 on the host backend. */
  comm = 0;
  readonly rounds = new Map<number, Round>();
  /** The scheduler takes turns by client process; a group's collectives take theirs as one. */
  readonly process: ClientProcess;

  constructor(
    readonly id: number,
    readonly name: string,
    readonly size: number,
  ) {
    this.members = new Array<Member | undefined>(size).fill(undefined); // not sparse: every() and flatMap() skip holes
    this.process = new ClientProcess(`group:${id}`, null, null);
  }

  /** World rank of each group rank: set once every member has joined. */
  devices: number[] = [];
}

export interface GroupsOptions {
  world: World;
  scheduler: Scheduler;
  recorder: FlightRecorder;
  logger: Logger;
  timeoutMs: number;
  maxTimeoutMs: number;
  /** Some members have sent collective k and others not for this long: a warning, once per period. */
  stallWarnMs: number;
}

const NEVER = 8.64e15; // a scheduler deadline that never comes: members' own deadlines answer them

export class Groups {
  private readonly byName = new Map<string, Group>();
  private readonly live = new Set<Group>();
  private nextId = 1;
  private readonly stallTimer: NodeJS.Timeout;
  private readonly log: Logger;

  constructor(private readonly opts: GroupsOptions) {
    this.log = opts.logger.child({ part: 'groups' });
    this.stallTimer = setInterval(() => this.inspectStalls(), Math.max(10, Math.min(1000, Math.floor(opts.stallWarnMs / 4))));
    this.stallTimer.unref();
    // A broken world takes its communicators with it, split ones included.
    opts.world.on('state', (state: string) => {
      if (state === 'rebuilding' || state === 'failed') this.worldBroke(state);
    });
  }

  /** Every group that exists (forming, live, or dissolved while members still hold it). */
  list(): Group[] {
    return [...this.live];
  }

  close(): void {
    clearInterval(this.stallTimer);
  }

  join(session: MemberSession, req: JoinRequest): void {
    const { world } = this.opts;
    if (world.state === 'failed') throw world.failedError();
    const timeoutMs = requestTimeout(req.timeoutMs, this.opts.timeoutMs, this.opts.maxTimeoutMs);
    if (req.size > world.size) throw new NccldError(ErrorCodes.GROUP_SIZE, `group size ${req.size} is more than this daemon's ${world.size} ranks`);
    let g = this.byName.get(req.group);
    if (g && g.state !== 'forming') throw new NccldError(ErrorCodes.GROUP_RANK_TAKEN, `group ${JSON.stringify(req.group)} is already formed; a new one under this name can form once it is dissolved`);
    if (g && g.size !== req.size) throw new NccldError(ErrorCodes.GROUP_SIZE, `group ${JSON.stringify(req.group)} has size ${g.size}, not ${req.size}`);
    if (g?.members[req.rank]) {
      throw new NccldError(ErrorCodes.GROUP_RANK_TAKEN, `rank ${req.rank} of group ${JSON.stringify(req.group)} is already held (pid ${g.members[req.rank]!.session.peerPid ?? '?'})`);
    }
    const taken = g?.members.find((m) => m?.device === req.device);
    if (taken) {
      throw new NccldError(ErrorCodes.GROUP_DEVICE_TAKEN, `rank ${taken.rank} of group ${JSON.stringify(req.group)} already sits on device ${req.device}: one member per device`);
    }
    if (!g) {
      g = new Group(this.nextId++, req.group, req.size);
      this.byName.set(g.name, g);
      this.live.add(g);
    }
    const m = new Member(g, session, req.rank, req.device, req.id);
    g.members[req.rank] = m;
    session.track(req.id);
    session.memberships.set(g.id, m);
    m.joinTimer = setTimeout(() => {
      const missing = g!.members.flatMap((x, r) => (x ? [] : [r]));
      this.withdraw(m, new NccldError(ErrorCodes.TIMEOUT, `group ${JSON.stringify(g!.name)} did not form within ${timeoutMs} ms: rank${missing.length > 1 ? 's' : ''} ${missing.join(', ')} never joined`));
    }, timeoutMs);
    if (g.members.every((x) => x)) this.form(g);
  }

  /** A member sends its next collective in the group. */
  submit(session: MemberSession, req: CollectiveRequest, resolve: (slot: BufferSlot, i: number, bytes: number, field: string, rank: number, elem: number) => Slot): void {
    const m = session.memberships.get(req.group!);
    if (!m) throw new NccldError(ErrorCodes.NO_SUCH_GROUP, `group ${req.group} is not one this connection joined`);
    const g = m.group;
    if (g.state === 'dissolved') throw g.reason!;
    if (g.state !== 'live') throw new NccldError(ErrorCodes.NO_SUCH_GROUP, `group ${req.group} is not formed yet`);
    const timeoutMs = requestTimeout(req.timeoutMs, this.opts.timeoutMs, this.opts.maxTimeoutMs);
    if ((req.waitEvent || req.doneEvent) && !this.opts.world.traits.needsCommunicator) {
      throw new NccldError(ErrorCodes.WRONG_BACKEND, 'CUDA events need the nccl backend: this daemon runs the host backend');
    }
    if (ROOTED.has(req.collective) && req.root! >= g.size) {
      throw new NccldError(ErrorCodes.BAD_REQUEST, `root ${req.root} is not a rank of group ${JSON.stringify(g.name)} (size ${g.size})`);
    }
    const elem = DTYPES[req.dtype].bytes;
    const need = collectiveElements(req.collective, req.count, g.size);
    const inPlace = !req.recv;
    const send = req.collective === 'barrier' ? null : resolve(req.send[0], 0, (inPlace ? Math.max(need.send, need.recv) : need.send) * elem, 'send', m.device, elem);
    const recv = req.recv ? resolve(req.recv[0], 0, need.recv * elem, 'recv', m.device, elem) : null;
    if (send && recv && slotsOverlap(send, need.send * elem, recv, need.recv * elem) && !isInPlacePair(req.collective, send.offset, recv.offset, req.count * elem, m.rank)) {
      throw new NccldError(ErrorCodes.BUFFER_OVERLAP, 'send and recv share bytes: leave recv out to run in place');
    }
    for (const s of [send, recv]) if (s) s.reg.users++;
    session.track(req.id);
    const k = m.submitted++;
    let round = g.rounds.get(k);
    if (!round) g.rounds.set(k, (round = { k, subs: new Array<Submission | undefined>(g.size).fill(undefined), arrived: 0, firstAt: Date.now(), warnedAt: 0 }));
    const sub: Submission = { member: m, requestId: req.id, req, send, recv, timer: null, answered: false };
    round.subs[m.rank] = sub;
    round.arrived++;
    sub.timer = setTimeout(() => {
      sub.timer = null;
      if (sub.answered) return;
      sub.answered = true;
      const waiting = g.rounds.get(k) === round;
      const missing = waiting ? round!.subs.flatMap((x, r) => (x ? [] : [r])) : [];
      m.session.reply(sub.requestId, new NccldError(ErrorCodes.TIMEOUT, waiting
        ? `the deadline passed while collective ${k} of group ${JSON.stringify(g.name)} waited for rank${missing.length > 1 ? 's' : ''} ${missing.join(', ')}; it still runs once they send theirs`
        : `the deadline passed while collective ${k} of group ${JSON.stringify(g.name)} ran; it still runs to its end`));
    }, timeoutMs);
    if (round.arrived === g.size) {
      g.rounds.delete(k);
      this.launch(g, round);
    }
  }

  /** leave: dissolves the group; the reply comes once its communicator is freed. */
  leave(session: MemberSession, number: number, requestId: number): void {
    const m = session.memberships.get(number);
    if (!m) throw new NccldError(ErrorCodes.NO_SUCH_GROUP, `group ${number} is not one this connection joined`);
    session.memberships.delete(number);
    session.track(requestId);
    const freed = this.drop(m, `rank ${m.rank} (pid ${session.peerPid ?? '?'}) left`);
    void freed.then(() => {
      session.reply(requestId, {});
      session.settle();
    });
  }

  /** A connection closed: its memberships go as if it had left. */
  sessionGone(session: MemberSession): void {
    for (const m of [...session.memberships.values()]) void this.drop(m, `rank ${m.rank} (pid ${session.peerPid ?? '?'}) disconnected`);
    session.memberships.clear();
  }

  /** A member goes: a forming group loses its claim; a formed one is dissolved. Resolves once its communicator is freed. */
  private drop(m: Member, why: string): Promise<void> {
    const g = m.group;
    if (g.state === 'forming') {
      this.withdraw(m, new NccldError(ErrorCodes.PEER_LOST, `${why} before the group formed`));
      return Promise.resolve();
    }
    if (g.state !== 'dissolved') {
      this.log.info({ group: g.name, rank: m.rank }, `group dissolved: ${why}`);
      return this.dissolve(g, new NccldError(ErrorCodes.PEER_LOST, `group ${JSON.stringify(g.name)} was dissolved: ${why}`, { rank: m.rank }), true);
    }
    this.forgetIfUnheld(g);
    return Promise.resolve();
  }

  /** A forming group's member gives up (deadline, disconnect): its rank is free again. */
  private withdraw(m: Member, err: NccldError): void {
    const g = m.group;
    if (g.members[m.rank] !== m) return;
    if (m.joinTimer) clearTimeout(m.joinTimer);
    g.members[m.rank] = undefined;
    m.session.memberships.delete(g.id);
    m.session.reply(m.joinId, err);
    m.session.settle();
    if (g.members.every((x) => !x)) {
      this.byName.delete(g.name);
      this.live.delete(g);
    }
  }

  private form(g: Group): void {
    g.state = 'building';
    g.devices = g.members.map((m) => m!.device);
    for (const m of g.members) {
      if (m!.joinTimer) clearTimeout(m!.joinTimer);
      m!.joinTimer = null;
    }
    const done = (err: NccldError | null) => {
      if (g.state !== 'building') return; // dissolved meanwhile (a member went, the world broke)
      if (err) {
        this.dissolve(g, err, false);
        for (const m of g.members) this.answerJoin(m!, err);
        return;
      }
      g.state = 'live';
      this.log.info({ group: g.name, size: g.size, devices: g.devices }, 'group formed');
      for (const m of g.members) this.answerJoin(m!, null);
    };
    if (!this.opts.world.traits.needsCommunicator) return done(null);
    // Every world rank takes part in the split; members get a communicator ordered by group rank.
    g.comm = g.id;
    const keys = new Array(this.opts.world.size).fill(-1);
    g.members.forEach((m) => (keys[m!.device] = m!.rank));
    this.control(g, 'split', { ranks: this.opts.world.allRanks, send: [], recv: null, comm: g.comm, grouped: false, splitKeys: keys }, done);
  }

  private answerJoin(m: Member, err: NccldError | null): void {
    const g = m.group;
    m.session.reply(m.joinId, err ?? { group: g.id, size: g.size, rank: m.rank, devices: g.devices });
    m.session.settle();
    if (err) m.session.memberships.delete(g.id);
  }

  /** Runs communicator control (split, free) through the scheduler, in the global order. */
  private control(g: Group, kind: 'split' | 'free', parts: Collective['parts'], done: (err: NccldError | null) => void): void {
    const owner: CollectiveOwner = { process: g.process, answer: (_c, err) => done(err), ended: () => {} };
    const rec = this.opts.recorder.queued(0, `group ${g.name}`, 0, kind, 'u8', '-', g.size, 0);
    const c = new Collective(owner, 0, kind, 'u8', 'sum', g.size, 0, parts, NEVER, rec);
    try {
      this.opts.scheduler.submit(c);
    } catch (err) {
      this.opts.recorder.finish(rec, toNccldError(err));
      done(toNccldError(err));
    }
  }

  /**
   * Ends a group: every collective still waiting for peers fails with `err`; those on the ranks
   * run to their end. With `free`, its communicator is freed (after them, in ring order).
   */
  private dissolve(g: Group, err: NccldError, free: boolean): Promise<void> {
    const wasLive = g.state === 'live';
    g.state = 'dissolved';
    g.reason = err;
    if (this.byName.get(g.name) === g) this.byName.delete(g.name);
    for (const round of g.rounds.values()) {
      for (const sub of round.subs) if (sub) this.finishSub(sub, err);
    }
    g.rounds.clear();
    this.forgetIfUnheld(g);
    if (!free || !wasLive || g.comm === 0) return Promise.resolve();
    return new Promise((resolve) => {
      this.control(g, 'free', { ranks: g.devices, send: [], recv: null, comm: g.comm, grouped: true }, (e) => {
        if (e) this.log.warn({ group: g.name, err: e.message }, 'freeing the group communicator failed');
        resolve();
      });
    });
  }

  private forgetIfUnheld(g: Group): void {
    if (g.state === 'dissolved' && g.members.every((m) => !m || !m.session.memberships.has(g.id))) this.live.delete(g);
  }

  /** All members sent collective k: check they agree, then run it once over their devices. */
  private launch(g: Group, round: Round): void {
    const subs = round.subs as Submission[];
    const diff = disagreement(subs);
    if (diff) {
      const err = new NccldError(ErrorCodes.MISMATCH, `collective ${round.k} of group ${JSON.stringify(g.name)}: the ranks disagree on ${diff.text}`, { mismatch: diff.fields });
      this.log.warn({ group: g.name, collective: round.k, mismatch: diff.fields }, 'group collective mismatch');
      for (const s of subs) this.finishSub(s, err);
      return;
    }
    const first = subs[0].req;
    const inPlace = !first.recv;
    const withEvents = subs.some((s) => s.req.waitEvent || s.req.doneEvent);
    const parts: Collective['parts'] = {
      ranks: g.devices,
      send: first.collective === 'barrier' ? [] : subs.map((s) => s.send!),
      recv: inPlace ? null : subs.map((s) => s.recv!),
      comm: g.comm,
      grouped: true,
      ...(withEvents
        ? { waitEvents: subs.map((s) => s.req.waitEvent ?? null), doneEvents: subs.some((s) => s.req.doneEvent) ? subs.map((s) => s.req.doneEvent ?? null) : undefined }
        : {}),
    };
    const owner: CollectiveOwner = {
      process: g.process,
      answer: (c, err) => {
        if (!err) g.done++;
        for (const s of subs) this.answerSub(s, err ?? { seq: c.seq });
      },
      ended: () => {
        for (const s of subs) s.member.session.settle(s.send, s.recv);
      },
      launched: () => {
        for (const s of subs) if (s.req.doneEvent && !s.answered) s.member.session.sendLaunched(s.requestId);
      },
    };
    const elem = DTYPES[first.dtype].bytes;
    const rec = this.opts.recorder.queued(subs[0].member.session.id, `group ${g.name}`, subs[0].requestId, first.collective, first.dtype, first.op ?? '-', first.count, first.count * elem);
    const c = new Collective(owner, subs[0].requestId, first.collective, first.dtype, first.op ?? 'sum', first.count, first.root ?? 0, parts, NEVER, rec);
    try {
      this.opts.scheduler.submit(c);
    } catch (err) {
      this.opts.recorder.finish(rec, toNccldError(err));
      for (const s of subs) this.finishSub(s, toNccldError(err));
    }
  }

  private answerSub(s: Submission, result: Record<string, unknown> | NccldError): void {
    if (s.timer) clearTimeout(s.timer);
    s.timer = null;
    if (s.answered) return;
    s.answered = true;
    s.member.session.reply(s.requestId, result);
  }

  /** A submission that will never run: answered, its buffers and place freed. */
  private finishSub(s: Submission, err: NccldError): void {
    this.answerSub(s, err);
    s.member.session.settle(s.send, s.recv);
  }

  private worldBroke(state: string): void {
    for (const g of [...this.live]) {
      if (g.state !== 'live' && g.state !== 'building') continue;
      const err = new NccldError(ErrorCodes.ABORTED, `group ${JSON.stringify(g.name)} was dissolved: the world ${state === 'failed' ? 'failed' : 'broke and is being rebuilt'} (${this.opts.world.lastBreak ?? 'no reason given'}); join again`);
      if (g.state === 'building') {
        g.state = 'dissolved';
        g.reason = err;
        this.byName.delete(g.name);
        for (const m of g.members) this.answerJoin(m!, err);
        this.forgetIfUnheld(g);
        continue;
      }
      void this.dissolve(g, err, false);
    }
  }

  private inspectStalls(): void {
    const now = Date.now();
    for (const g of this.live) {
      if (g.state !== 'live') continue;
      for (const round of g.rounds.values()) {
        if (now - round.firstAt < this.opts.stallWarnMs || now - round.warnedAt < this.opts.stallWarnMs) continue;
        round.warnedAt = now;
        const missing = round.subs.flatMap((s, r) => (s ? [] : [r]));
        const sent = round.subs.flatMap((s, r) => (s ? [r] : []));
        this.log.warn(
          { group: g.name, collective: round.k, missingRanks: missing, sentRanks: sent, waitingMs: now - round.firstAt },
          `group ${g.name}: collective ${round.k} waits for rank${missing.length > 1 ? 's' : ''} ${missing.join(', ')} (sent by ${sent.join(', ')} ${Math.round((now - round.firstAt) / 1000)} s ago)`,
        );
      }
    }
  }

  /** What the debug socket's `groups` command shows of one group. */
  describe(g: Group): GroupView {
    const now = Date.now();
    return {
      name: g.name,
      number: g.id,
      state: g.state,
      size: g.size,
      collectivesDone: g.done,
      reason: g.reason?.message ?? null,
      members: g.members.flatMap((m) => (m ? [{ rank: m.rank, pid: m.session.peerPid, device: m.device, client: m.session.id, submitted: m.submitted }] : [])),
      waiting: [...g.rounds.values()].map((r) => ({
        collective: r.k,
        since: new Date(r.firstAt).toISOString(),
        waitingMs: now - r.firstAt,
        sent: r.subs.flatMap((s, rank) => (s ? [rank] : [])),
        missing: r.subs.flatMap((s, rank) => (s ? [] : [rank])),
      })),
    };
  }

}

export interface GroupView {
  name: string;
  number: number;
  state: GroupState;
  size: number;
  collectivesDone: number;
  reason: string | null;
  members: { rank: number; pid: number | null; device: number; client: number; submitted: number }[];
  waiting: { collective: number; since: string; waitingMs: number; sent: number[]; missing: number[] }[];
}

/** The fields on which the members' k-th collectives differ, or null when they agree. */
function disagreement(subs: Submission[]): { text: string; fields: Record<string, unknown[]> } | null {
  const pick = (s: Submission): Record<string, unknown> => {
    const r = s.req;
    const f: Record<string, unknown> = { collective: r.collective };
    if (r.collective === 'barrier') return f;
    f.dtype = r.dtype;
    f.count = r.count;
    f.inPlace = !r.recv;
    if (REDUCING.has(r.collective)) f.op = r.op;
    if (ROOTED.has(r.collective)) f.root = r.root;
    return f;
  };
  const views = subs.map(pick);
  const names = new Set(views.flatMap((v) => Object.keys(v)));
  const fields: Record<string, unknown[]> = {};
  for (const name of names) {
    const values = views.map((v) => v[name] ?? null);
    if (values.some((v) => v !== values[0])) fields[name] = values;
  }
  const differing = Object.keys(fields);
  if (differing.length === 0) return null;
  const text = differing.map((f) => `${f} (${fields[f].map((v, r) => `rank ${r}: ${JSON.stringify(v)}`).join(', ')})`).join('; ');
  return { text, fields };
}
