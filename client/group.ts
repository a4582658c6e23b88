// A group of client processes (one per GPU, typically) taking part in collectives together, each
// with its own buffer, as the ranks of an NCCL job do. Made by Client.joinGroup; its requests go
// over that client's connection, in call order: the daemon pairs members' collectives by the
// order each member sent them.
import type {
  AllToAllOptions,
  BarrierOptions,
  BufferArg,
  Client,
  CollectiveOptions,
  CollectiveResult,
  DataOptions,
  ReduceOptions,
  RootedOptions,
  RootedReduceOptions,
} from './client.js';

export class Group {
  /** @internal Made by Client.joinGroup. */
  constructor(
    private readonly client: Client,
    /** The name every member joined by. */
    readonly name: string,
    /** The number this connection names the group by on the wire. */
    readonly number: number,
    readonly size: number,
    /** This member's rank in the group. */
    readonly rank: number,
    /** Each group rank's world rank (the device its buffers live on). */
    readonly devices: readonly number[],
  ) {}

  /**
   * This member's next collective in the group, over its own buffer; resolves once it has
   * finished on every member. Every member must call the same collectives in the same order.
   */
  collective(opts: CollectiveOptions<BufferArg>): Promise<CollectiveResult> {
    const { send, recv, ...rest } = opts;
    return this.client.submitCollective({ ...rest, send: send === undefined ? [] : [send], recv: recv === undefined ? undefined : [recv] }, this);
  }

  allReduce(opts: ReduceOptions<BufferArg>): Promise<CollectiveResult> {
    return this.collective({ ...opts, collective: 'allreduce' });
  }

  broadcast(opts: RootedOptions<BufferArg>): Promise<CollectiveResult> {
    return this.collective({ ...opts, collective: 'broadcast' });
  }

  reduce(opts: RootedReduceOptions<BufferArg>): Promise<CollectiveResult> {
    return this.collective({ ...opts, collective: 'reduce' });
  }

  allGather(opts: DataOptions<BufferArg>): Promise<CollectiveResult> {
    return this.collective({ ...opts, collective: 'allgather' });
  }

  reduceScatter(opts: ReduceOptions<BufferArg>): Promise<CollectiveResult> {
    return this.collective({ ...opts, collective: 'reducescatter' });
  }

  allToAll(opts: AllToAllOptions<BufferArg>): Promise<CollectiveResult> {
    return this.collective({ ...opts, collective: 'alltoall' });
  }

  barrier(opts: BarrierOptions = {}): Promise<CollectiveResult> {
    return this.collective({ ...opts, collective: 'barrier' });
  }

  /**
   * Leaves, which dissolves the group: the other members' waiting and later collectives in it
   * fail with NCCLD_ERR_PEER_LOST. Sent after this member's earlier calls.
   */
  leave(): Promise<void> {
    return this.client.leaveGroup(this.number);
  }
}
