/// Everything a node needs its shell to do, collected since the last ``RawNode/advance(_:)``.
///
/// The shell MUST, in order: persist ``snapshot``, ``entries`` and ``hardState`` (synced when ``mustSync``);
/// then send ``messages``; then apply ``committedEntries``; then call ``RawNode/advance(_:)``. It MAY send
/// ``messagesBeforeWrite`` before the writes, and then ``messagesAfterWrite`` after them instead of ``messages``.
public struct Ready: Sendable {
    /// The leader and role, if they changed.
    public var softState: SoftState?
    /// The hard state to persist, if it changed.
    public var hardState: HardState?
    /// Confirmed read-index requests.
    public var readStates: [ReadState]
    /// Entries to append to stable storage (replacing any conflicting tail).
    public var entries: [Entry]
    /// A snapshot to install in storage and in the application.
    public var snapshot: Snapshot?
    /// Entries committed by a quorum, to apply in order.
    public var committedEntries: [Entry]
    /// Messages to send after the writes above are durable.
    public var messages: [Message]
    /// Whether the writes must be fsynced (a new vote, term or entries) or may be lazy (only a commit index).
    public var mustSync: Bool
    /// Whether the leader's appends and heartbeats among ``messages`` may be sent before this Ready's writes are
    /// durable, so that its followers write the new entries while it writes them itself (Raft thesis, §10.2.1):
    /// true when the Ready changes neither the term nor the vote and holds no snapshot. Everything else — answers,
    /// votes, a node's messages in a new term — still waits for the writes.
    ///
    /// This relies on the order a Ready already requires — nothing of a later Ready (a commit it reports, an entry
    /// it applies, a message it sends) is acted on before this Ready's writes are durable: the leader counts its own
    /// new entries towards the commit from the moment it appends them, so a follower's acknowledgement may move
    /// the commit in memory before the leader's write ends, and only that order keeps such a commit from being
    /// applied or announced while the entry is on a single disk.
    public var replicatesBeforeWrite: Bool

    /// The messages that may be sent before the writes are durable (see ``replicatesBeforeWrite``), in order.
    public var messagesBeforeWrite: [Message] {
        replicatesBeforeWrite ? messages.filter(Self.replicates) : []
    }

    /// The messages that must wait until the writes are durable, in order: all of them unless
    /// ``replicatesBeforeWrite``.
    public var messagesAfterWrite: [Message] {
        replicatesBeforeWrite ? messages.filter { !Self.replicates($0) } : messages
    }

    private static func replicates(_ message: Message) -> Bool {
        message.type == .app || message.type == .heartbeat
    }
}
