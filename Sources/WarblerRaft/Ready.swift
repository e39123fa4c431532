/// Everything a node needs its shell to do, collected since the last ``RawNode/advance(_:)``.
///
/// The shell MUST, in order: persist ``snapshot``, ``entries`` and ``hardState`` (synced when ``mustSync``);
/// then send ``messages``; then apply ``committedEntries``; then call ``RawNode/advance(_:)``.
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
}
