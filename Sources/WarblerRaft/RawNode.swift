/// One node of one Raft group, driven by its shell: the public face of the consensus core.
///
/// `RawNode` is a value with no clocks, threads, sockets or disk. The shell calls ``tick()`` at a fixed
/// interval, feeds peers' messages to ``step(_:)``, and loops: while ``hasReady``, take ``ready()``, do what it
/// says, and ``advance(_:)``. It is not thread-safe; one owner drives it.
public struct RawNode {
    var raft: Raft
    private var previousSoftState: SoftState
    private var previousHardState: HardState

    /// Creates a node over `storage`, which holds the node's persisted state (or a bootstrap membership).
    ///
    /// - Throws: ``RaftError`` when the configuration is invalid or the storage cannot be read.
    public init(config: Config, storage: any RaftStorage) throws(RaftError) {
        raft = try Raft(config: config, storage: storage)
        previousSoftState = raft.softState
        previousHardState = raft.hardState
    }

    // MARK: - Inputs

    /// Advances the logical clock by one tick (election and heartbeat timeouts are counted in ticks).
    public mutating func tick() { raft.tick() }

    /// Starts an election now (pre-vote first if enabled).
    public mutating func campaign() { raft.step(Message(type: .hup, from: raft.id)) }

    /// Proposes one entry of application data.
    ///
    /// - Throws: ``RaftError`` with ``RaftError/Code/proposalDropped`` (and a leader hint) when this node is
    ///   not the leader, or ``RaftError/Code/uncommittedLogFull`` when the leader is saturated.
    public mutating func propose(_ data: [UInt8]) throws(RaftError) {
        try proposeBatch(CollectionOfOne(data))
    }

    /// Proposes several entries at once; they are appended contiguously, or not at all.
    public mutating func proposeBatch(_ batch: some Collection<[UInt8]>) throws(RaftError) {
        guard !batch.isEmpty else { return }
        var entries: [Entry] = []
        entries.reserveCapacity(batch.count)
        for data in batch { entries.append(Entry(data: data)) }
        if let error = raft.step(Message(type: .prop, from: raft.id, entries: entries)) { throw error }
    }

    /// Proposes a membership change. It takes effect on each node when its entry is applied.
    ///
    /// - Throws: ``RaftError/Code/confChangePending`` while an earlier change is not applied, or the errors
    ///   of ``propose(_:)``.
    public mutating func proposeConfChange(_ change: ConfChange) throws(RaftError) {
        let entry = Entry(kind: .confChange, data: change.encoded())
        if let error = raft.step(Message(type: .prop, from: raft.id, entries: [entry])) { throw error }
    }

    /// Feeds a message from a peer. Local message types are refused.
    public mutating func step(_ message: Message) throws(RaftError) {
        if message.type.isLocal {
            throw RaftError(.proposalDropped, "\(message.type.name) is local and cannot come from the network")
        }
        // Responses from nodes we no longer track are harmless but pointless.
        if message.type.isResponse && raft.tracker.progress[message.from] == nil && message.type != .readIndexResp {
            return
        }
        if let error = raft.step(message) { throw error }
    }

    /// Asks for a linearizable read point. When confirmed, a ``ReadState`` with `context` appears in a
    /// ``Ready``; reads are safe once the application has applied its index. `context` MUST be unique per
    /// outstanding request.
    public mutating func readIndex(context: [UInt8]) throws(RaftError) {
        if let error = raft.step(Message(type: .readIndex, from: noneNode, context: context)) { throw error }
    }

    /// Asks the leader (this node) to hand leadership to `transferee`, which must be a voter.
    public mutating func transferLeadership(to transferee: NodeID) throws(RaftError) {
        guard raft.role == .leader else {
            throw RaftError(.proposalDropped, "only the leader can transfer leadership", leaderHint: raft.lead)
        }
        guard raft.tracker.voters.contains(transferee) else {
            throw RaftError(.invalidTransfer, "node \(transferee) is not a voter")
        }
        raft.step(Message(type: .transferLeader, from: transferee))
    }

    /// Tells the leader that `peer` could not be reached, so it stops pipelining to it.
    public mutating func reportUnreachable(_ peer: NodeID) {
        raft.step(Message(type: .unreachable, from: peer))
    }

    /// Tells the leader whether the snapshot sent to `peer` was delivered.
    public mutating func reportSnapshot(_ peer: NodeID, succeeded: Bool) {
        raft.step(Message(type: .snapStatus, from: peer, reject: !succeeded))
    }

    // MARK: - Outputs

    /// True when ``ready()`` has something for the shell to do.
    public var hasReady: Bool {
        if raft.softState != previousSoftState { return true }
        let hardState = raft.hardState
        if !hardState.isEmpty && hardState != previousHardState { return true }
        if raft.log.unstable.snapshot != nil { return true }
        if !raft.msgs.isEmpty || !raft.log.unstable.entries.isEmpty || !raft.readStates.isEmpty { return true }
        return raft.log.hasNextCommittedEntries
    }

    /// Collects what the shell must do. Call ``advance(_:)`` with it once done.
    public mutating func ready() -> Ready {
        let softState = raft.softState
        let hardState = raft.hardState
        let entries = raft.log.unstableEntries
        let changedHardState = hardState != previousHardState && !hardState.isEmpty ? hardState : nil
        let ready = Ready(
            softState: softState != previousSoftState ? softState : nil,
            hardState: changedHardState,
            readStates: raft.readStates,
            entries: entries,
            snapshot: raft.log.unstable.snapshot,
            committedEntries: raft.log.nextCommittedEntries(),
            messages: raft.msgs,
            mustSync: !entries.isEmpty || hardState.term != previousHardState.term
                || hardState.vote != previousHardState.vote,
            replicatesBeforeWrite: hardState.term == previousHardState.term
                && hardState.vote == previousHardState.vote && raft.log.unstable.snapshot == nil
        )
        if ready.softState != nil { previousSoftState = softState }
        raft.msgs = []
        raft.readStates = []
        return ready
    }

    /// Tells the node the shell has done everything `ready` asked.
    public mutating func advance(_ ready: Ready) {
        if let hardState = ready.hardState { previousHardState = hardState }
        if let snapshot = ready.snapshot {
            raft.log.stableSnapshotTo(index: snapshot.metadata.index)
            if snapshot.metadata.index > raft.log.applied { raft.log.applied = snapshot.metadata.index }
        }
        if let last = ready.entries.last { raft.log.stableTo(index: last.index, term: last.term) }
        if let lastApplied = ready.committedEntries.last {
            raft.log.appliedTo(lastApplied.index)
            raft.reduceUncommittedSize(ready.committedEntries)
            for entry in ready.committedEntries where entry.kind == .confChange {
                // Entries were validated when proposed; one that does not decode was never proposed by us.
                guard let change = try? ConfChange(decoding: entry.data) else {
                    preconditionFailure("raft: committed conf change at \(entry.index) cannot be decoded")
                }
                raft.applyConfChange(change)
            }
        }
    }

    // MARK: - Observation

    /// This node's identity.
    public var id: NodeID { raft.id }
    /// The role and known leader.
    public var softState: SoftState { raft.softState }
    /// The term, vote and commit index.
    public var hardState: HardState { raft.hardState }
    /// The current membership as this node has applied it.
    public var confState: ConfState { raft.tracker.confState }
    /// The highest index the application has applied.
    public var appliedIndex: UInt64 { raft.log.applied }
    /// The last index in this node's log (persisted or not).
    public var lastIndex: UInt64 { raft.log.lastIndex }
    /// The leader's view of each member's log, or empty when not leader.
    public var progress: [NodeID: Progress] { raft.role == .leader ? raft.tracker.progress : [:] }
    /// The node leadership is being transferred to, if any.
    public var leadTransferee: NodeID { raft.leadTransferee }
}
