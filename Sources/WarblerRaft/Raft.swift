/// How a node campaigns.
enum CampaignType {
    /// A pre-vote round that does not change terms (§9.6 of the Raft thesis).
    case preElection
    /// A normal election.
    case election
    /// An election on the leader's request (leader transfer): skips pre-vote and lease checks.
    case transfer
}

/// The vote context that marks a leader-transfer election, so that voters ignore their lease.
let campaignTransferContext: [UInt8] = Array("CampaignTransfer".utf8)

/// The Raft state machine of one node of one group. Pure: it reads its log from ``RaftStorage`` but never
/// writes, sleeps, or sends; effects leave through `msgs` and the log's unstable part.
struct Raft {
    let id: NodeID
    private(set) var term: UInt64 = 0
    private(set) var vote: NodeID = noneNode
    var readStates: [ReadState] = []
    var log: RaftLog
    let maxMsgSize: Int
    let maxUncommittedSize: Int
    var tracker: ProgressTracker
    private(set) var role: StateRole = .follower
    private(set) var isLearner = false
    var msgs: [Message] = []
    private(set) var lead: NodeID = noneNode
    /// The node leadership is being transferred to, or none.
    private(set) var leadTransferee: NodeID = noneNode
    /// The index of the newest membership change this leader proposed; a new one waits until it is applied.
    private(set) var pendingConfIndex: UInt64 = 0
    /// Bytes of entries this leader appended that are not yet applied.
    private(set) var uncommittedSize = 0
    var readOnly: ReadOnly
    private(set) var electionElapsed = 0
    private var heartbeatElapsed = 0
    let checkQuorum: Bool
    let preVote: Bool
    let heartbeatTimeout: Int
    let electionTimeout: Int
    private(set) var randomizedElectionTimeout = 0
    /// Read-index requests received before this leader committed an entry of its term.
    private var pendingReadIndexMessages: [Message] = []
    private var random: SplitMix64

    init(config: Config, storage: any RaftStorage) throws(RaftError) {
        try config.validate()
        id = config.id
        log = try RaftLog(storage: storage, maxCommittedSize: config.maxCommittedSizePerReady)
        let (hardState, confState) = try storage.initialState()
        maxMsgSize = config.maxSizePerMsg
        maxUncommittedSize = config.maxUncommittedEntriesSize == 0 ? Int.max : config.maxUncommittedEntriesSize
        tracker = ProgressTracker(maxInflight: config.maxInflightMsgs, maxInflightBytes: config.maxInflightBytes)
        checkQuorum = config.checkQuorum
        preVote = config.preVote
        heartbeatTimeout = config.heartbeatTick
        electionTimeout = config.electionTick
        readOnly = ReadOnly(option: config.readOnlyOption)
        random = SplitMix64(seed: config.randomSeed)
        for voter in confState.voters { tracker.set(voter, learner: false, next: 1) }
        for learner in confState.learners { tracker.set(learner, learner: true, next: 1) }
        isLearner = confState.learners.contains(id)
        if !hardState.isEmpty { loadState(hardState) }
        if config.applied > 0 { log.appliedTo(config.applied) }
        becomeFollower(term: term, lead: noneNode)
    }

    private mutating func loadState(_ state: HardState) {
        if state.commit < log.committed || state.commit > log.lastIndex {
            preconditionFailure(
                "raft: \(id) state.commit \(state.commit) is out of range [\(log.committed), \(log.lastIndex)]"
            )
        }
        log.committed = state.commit
        term = state.term
        vote = state.vote
    }

    var softState: SoftState { SoftState(lead: lead, role: role) }
    var hardState: HardState { HardState(term: term, vote: vote, commit: log.committed) }

    /// A node may campaign only if it is a voter and is not installing a snapshot.
    var promotable: Bool { tracker.voters.contains(id) && log.unstable.snapshot == nil }

    // MARK: - Sending

    mutating func send(_ message: Message) {
        var message = message
        if message.from == noneNode { message.from = id }
        switch message.type {
        case .vote, .voteResp, .preVote, .preVoteResp:
            // Votes carry the term they are for: the candidate's (pre-)term, not necessarily ours.
            precondition(message.term != 0, "raft: \(message.type.name) sent without a term")
        case .prop, .readIndex:
            // Forwarded requests keep term 0 so that the leader treats them as local.
            break
        default:
            message.term = term
        }
        msgs.append(message)
    }

    // MARK: - Role transitions

    private mutating func reset(term newTerm: UInt64) {
        if term != newTerm {
            term = newTerm
            vote = noneNode
        }
        lead = noneNode
        electionElapsed = 0
        heartbeatElapsed = 0
        resetRandomizedElectionTimeout()
        abortLeaderTransfer()
        tracker.resetVotes()
        let lastIndex = log.lastIndex
        for memberID in tracker.ids {
            let learner = tracker.progress[memberID]!.isLearner
            var fresh = Progress(
                next: lastIndex + 1,
                isLearner: learner,
                maxInflight: tracker.maxInflight,
                maxInflightBytes: tracker.maxInflightBytes
            )
            if memberID == id { fresh.match = lastIndex }
            tracker.progress[memberID] = fresh
        }
        pendingConfIndex = 0
        uncommittedSize = 0
        readOnly = ReadOnly(option: readOnly.option)
        pendingReadIndexMessages = []
    }

    mutating func resetRandomizedElectionTimeout() {
        randomizedElectionTimeout = electionTimeout + Int(random.next() % UInt64(electionTimeout))
    }

    mutating func becomeFollower(term newTerm: UInt64, lead newLead: NodeID) {
        reset(term: newTerm)
        lead = newLead
        role = .follower
    }

    mutating func becomeCandidate() {
        precondition(role != .leader, "raft: invalid transition leader -> candidate")
        reset(term: term + 1)
        vote = id
        role = .candidate
    }

    mutating func becomePreCandidate() {
        precondition(role != .leader, "raft: invalid transition leader -> pre-candidate")
        // Pre-vote changes neither term nor vote.
        tracker.resetVotes()
        lead = noneNode
        role = .preCandidate
    }

    mutating func becomeLeader() {
        precondition(role != .follower, "raft: invalid transition follower -> leader")
        reset(term: term)
        lead = id
        role = .leader
        // Our own progress is trivially replicating.
        tracker.progress[id]?.becomeReplicate()
        // Conservatively forbid membership changes until everything up to now is applied: the log may hold an
        // unapplied change from an earlier term (this also closes the single-server-change bug of Raft §4.1
        // errata, since the no-op below must commit first).
        pendingConfIndex = log.lastIndex
        // An empty entry of the new term lets the leader commit earlier entries (§5.4.2).
        guard appendEntries([Entry()]) else {
            preconditionFailure("raft: empty entry was dropped")
        }
    }

    // MARK: - Ticks

    mutating func tick() {
        switch role {
        case .leader: tickHeartbeat()
        case .follower, .candidate, .preCandidate: tickElection()
        }
    }

    private mutating func tickElection() {
        electionElapsed += 1
        if promotable && electionElapsed >= randomizedElectionTimeout {
            electionElapsed = 0
            step(Message(type: .hup, from: id))
        }
    }

    private mutating func tickHeartbeat() {
        heartbeatElapsed += 1
        electionElapsed += 1
        if electionElapsed >= electionTimeout {
            electionElapsed = 0
            if checkQuorum { step(Message(type: .checkQuorum, from: id)) }
            // A transfer that did not finish within an election timeout is abandoned.
            if role == .leader && leadTransferee != noneNode { abortLeaderTransfer() }
        }
        guard role == .leader else { return }
        if heartbeatElapsed >= heartbeatTimeout {
            heartbeatElapsed = 0
            step(Message(type: .beat, from: id))
        }
    }

    // MARK: - Elections

    mutating func hup(_ type: CampaignType) {
        if role == .leader { return }
        if !promotable { return }
        // A committed membership change must be applied before we know whom to ask for votes.
        if log.hasUnappliedConfChange { return }
        campaign(type)
    }

    mutating func campaign(_ type: CampaignType) {
        guard promotable else { return }
        let voteType: MessageType
        let voteTerm: UInt64
        if type == .preElection {
            becomePreCandidate()
            voteType = .preVote
            // Pre-votes ask about the term we would have, without moving to it.
            voteTerm = term + 1
        } else {
            becomeCandidate()
            voteType = .vote
            voteTerm = term
        }
        if poll(id, granted: true) == .won {
            // A single-voter group wins at once.
            if type == .preElection {
                campaign(.election)
            } else {
                becomeLeader()
            }
            return
        }
        let lastIndex = log.lastIndex
        let lastTerm = log.lastTerm
        for voter in tracker.voters.sorted() where voter != id {
            send(
                Message(
                    type: voteType,
                    to: voter,
                    term: voteTerm,
                    logTerm: lastTerm,
                    index: lastIndex,
                    context: type == .transfer ? campaignTransferContext : []
                )
            )
        }
    }

    private mutating func poll(_ voter: NodeID, granted: Bool) -> VoteResult {
        tracker.recordVote(voter, granted: granted)
        return tracker.tallyVotes().result
    }

    // MARK: - Step

    /// Feeds one message (remote or local) into the state machine.
    @discardableResult
    mutating func step(_ m: Message) -> RaftError? {
        if m.term == 0 {
            // Local message, or a forwarded proposal or read.
        } else if m.term > term {
            if m.type == .vote || m.type == .preVote {
                let force = m.context == campaignTransferContext
                // Within a lease from a live leader, ignore vote requests: this stops a node that was cut off
                // (and whose term ran ahead) from deposing a healthy leader (thesis §4.2.3).
                let inLease = checkQuorum && lead != noneNode && electionElapsed < electionTimeout
                if !force && inLease { return nil }
            }
            switch m.type {
            case .preVote:
                // Never change our term in response to a pre-vote.
                break
            case .preVoteResp where !m.reject:
                // The term is bumped only when the pre-vote wins.
                break
            case .app, .heartbeat, .snap:
                becomeFollower(term: m.term, lead: m.from)
            default:
                becomeFollower(term: m.term, lead: noneNode)
            }
        } else if m.term < term {
            if (checkQuorum || preVote) && (m.type == .heartbeat || m.type == .app) {
                // A stale leader learns of the newer term and steps down; without this a node cut off by
                // check-quorum or pre-vote could never rejoin (etcd issue 5451).
                send(Message(type: .appResp, to: m.from))
            } else if m.type == .preVote {
                send(Message(type: .preVoteResp, to: m.from, term: term, reject: true))
            }
            return nil
        }

        switch m.type {
        case .hup:
            hup(preVote ? .preElection : .election)
            return nil
        case .vote, .preVote:
            // We may vote for the same candidate again, or for anyone if we have neither voted nor know a
            // leader in this term, or for a pre-vote for a future term.
            let canVote =
                vote == m.from || (vote == noneNode && lead == noneNode) || (m.type == .preVote && m.term > term)
            if canVote && log.isUpToDate(lastIndex: m.index, term: m.logTerm) {
                send(Message(type: m.type.voteResponse, to: m.from, term: m.term))
                if m.type == .vote {
                    electionElapsed = 0
                    vote = m.from
                }
            } else {
                send(Message(type: m.type.voteResponse, to: m.from, term: term, reject: true))
            }
            return nil
        default:
            switch role {
            case .leader: return stepLeader(m)
            case .candidate, .preCandidate: return stepCandidate(m)
            case .follower: return stepFollower(m)
            }
        }
    }

    private mutating func stepCandidate(_ m: Message) -> RaftError? {
        let myVoteResponse: MessageType = role == .preCandidate ? .preVoteResp : .voteResp
        switch m.type {
        case .prop:
            return RaftError(.proposalDropped, "no leader at term \(term); proposal dropped")
        case .app:
            becomeFollower(term: m.term, lead: m.from)
            handleAppend(m)
        case .heartbeat:
            becomeFollower(term: m.term, lead: m.from)
            handleHeartbeat(m)
        case .snap:
            becomeFollower(term: m.term, lead: m.from)
            handleSnapshot(m)
        case myVoteResponse:
            switch poll(m.from, granted: !m.reject) {
            case .won:
                if role == .preCandidate {
                    campaign(.election)
                } else {
                    becomeLeader()
                    broadcastAppend()
                }
            case .lost:
                becomeFollower(term: term, lead: noneNode)
            case .pending:
                break
            }
        case .readIndex:
            return RaftError(.proposalDropped, "no leader at term \(term); read index dropped")
        default:
            break
        }
        return nil
    }

    private mutating func stepFollower(_ m: Message) -> RaftError? {
        switch m.type {
        case .prop:
            // Warbler routes proposals to the leader itself; the follower only says where it is.
            if lead == noneNode { return RaftError(.proposalDropped, "no leader at term \(term); proposal dropped") }
            return RaftError(.proposalDropped, "not the leader", leaderHint: lead)
        case .app:
            electionElapsed = 0
            lead = m.from
            handleAppend(m)
        case .heartbeat:
            electionElapsed = 0
            lead = m.from
            handleHeartbeat(m)
        case .snap:
            electionElapsed = 0
            lead = m.from
            handleSnapshot(m)
        case .timeoutNow:
            // The leader hands over: campaign at once, skipping pre-vote.
            hup(.transfer)
        case .readIndex:
            guard lead != noneNode else {
                return RaftError(.proposalDropped, "no leader at term \(term); read index dropped")
            }
            var forwarded = m
            forwarded.to = lead
            send(forwarded)
        case .readIndexResp:
            readStates.append(ReadState(index: m.index, requestContext: m.context))
        default:
            break
        }
        return nil
    }

    // MARK: - Leader

    private mutating func stepLeader(_ m: Message) -> RaftError? {
        switch m.type {
        case .beat:
            broadcastHeartbeat()
            return nil
        case .checkQuorum:
            if !tracker.quorumActive(selfID: id) {
                becomeFollower(term: term, lead: noneNode)
            }
            for member in tracker.ids where member != id { tracker.progress[member]!.recentActive = false }
            return nil
        case .prop:
            return propose(m.entries)
        case .readIndex:
            if tracker.isSingleton {
                // A single voter confirms its own leadership.
                if let response = respondToReadIndex(m, index: log.committed) { send(response) }
                return nil
            }
            // Until an entry of this term commits, our commit index may lag the true one (§6.4 step 1).
            if !committedEntryInCurrentTerm {
                pendingReadIndexMessages.append(m)
                return nil
            }
            sendReadIndexResponse(m)
            return nil
        default:
            break
        }

        guard tracker.progress[m.from] != nil else { return nil }
        switch m.type {
        case .appResp:
            handleAppendResponse(m)
        case .heartbeatResp:
            tracker.progress[m.from]!.recentActive = true
            tracker.progress[m.from]!.flowPaused = false
            let progress = tracker.progress[m.from]!
            if progress.match < log.lastIndex || progress.state == .probe { sendAppend(to: m.from) }
            guard readOnly.option == .safe, !m.context.isEmpty else { return nil }
            guard let acks = readOnly.recvAck(from: m.from, context: m.context), tracker.hasQuorum(acks) else {
                return nil
            }
            for status in readOnly.advance(context: m.context) {
                if let response = respondToReadIndex(status.request, index: status.index) { send(response) }
            }
        case .snapStatus:
            guard tracker.progress[m.from]!.state == .snapshot else { return nil }
            if m.reject {
                // The snapshot did not arrive; probe again (which resends it if still needed).
                tracker.progress[m.from]!.pendingSnapshot = 0
            }
            tracker.progress[m.from]!.becomeProbe()
            // Wait for the follower's response (or a heartbeat) before probing.
            tracker.progress[m.from]!.flowPaused = true
        case .unreachable:
            if tracker.progress[m.from]!.state == .replicate { tracker.progress[m.from]!.becomeProbe() }
        case .transferLeader:
            let transferee = m.from
            if tracker.progress[transferee]!.isLearner { return nil }
            if leadTransferee != noneNode {
                if leadTransferee == transferee { return nil }
                abortLeaderTransfer()
            }
            if transferee == id { return nil }
            // The transfer must finish within an election timeout.
            electionElapsed = 0
            leadTransferee = transferee
            if tracker.progress[transferee]!.match == log.lastIndex {
                sendTimeoutNow(to: transferee)
            } else {
                sendAppend(to: transferee)
            }
        default:
            break
        }
        return nil
    }

    private mutating func handleAppendResponse(_ m: Message) {
        tracker.progress[m.from]!.recentActive = true
        if m.reject {
            var nextProbe = m.rejectHint
            if m.logTerm > 0 {
                // Skip every entry of the terms the follower cannot have (fast back-off, thesis §5.3 opt.).
                nextProbe = log.findConflictByTerm(index: m.rejectHint, term: m.logTerm).0
            }
            if tracker.progress[m.from]!.maybeDecrease(rejected: m.index, matchHint: nextProbe) {
                if tracker.progress[m.from]!.state == .replicate { tracker.progress[m.from]!.becomeProbe() }
                sendAppend(to: m.from)
            }
            return
        }
        let wasPaused = tracker.progress[m.from]!.isPaused
        let updated = tracker.progress[m.from]!.maybeUpdate(m.index)
        let progress = tracker.progress[m.from]!
        guard updated || (progress.match == m.index && progress.state == .probe) else { return }
        switch progress.state {
        case .probe:
            tracker.progress[m.from]!.becomeReplicate()
        case .snapshot where progress.match + 1 >= log.firstIndex:
            // The follower caught up through the snapshot (or otherwise): resume replication.
            tracker.progress[m.from]!.becomeProbe()
            tracker.progress[m.from]!.becomeReplicate()
        case .replicate:
            tracker.progress[m.from]!.inflights.freeLE(m.index)
        case .snapshot:
            break
        }
        if maybeCommit() {
            releasePendingReadIndexMessages()
            broadcastAppend()
        } else if wasPaused {
            // The follower was throttled; it can take more now.
            sendAppend(to: m.from)
        }
        // Fill the pipeline.
        while maybeSendAppend(to: m.from, sendIfEmpty: false) {}
        if m.from == leadTransferee && tracker.progress[m.from]!.match == log.lastIndex {
            sendTimeoutNow(to: m.from)
        }
    }

    /// Appends proposed entries to the leader's log and replicates them.
    private mutating func propose(_ entries: [Entry]) -> RaftError? {
        precondition(!entries.isEmpty, "raft: empty proposal")
        guard tracker.progress[id] != nil else {
            return RaftError(.proposalDropped, "this node was removed from the group")
        }
        guard leadTransferee == noneNode else {
            return RaftError(
                .proposalDropped,
                "leadership is being transferred to \(leadTransferee)",
                leaderHint: leadTransferee
            )
        }
        for position in entries.indices where entries[position].kind == .confChange {
            let change: ConfChange
            do { change = try ConfChange(decoding: entries[position].data) } catch { return error }
            if pendingConfIndex > log.applied {
                return RaftError(
                    .confChangePending,
                    "membership change at index \(pendingConfIndex) is not applied yet (applied \(log.applied))"
                )
            }
            if let problem = validate(change) { return problem }
            pendingConfIndex = log.lastIndex + UInt64(position) + 1
        }
        guard appendEntries(entries) else {
            return RaftError(
                .uncommittedLogFull,
                "uncommitted log holds \(uncommittedSize) bytes (limit \(maxUncommittedSize))"
            )
        }
        broadcastAppend()
        return nil
    }

    private func validate(_ change: ConfChange) -> RaftError? {
        if change.nodeID == noneNode { return RaftError(.invalidConfChange, "node id 0 is reserved") }
        switch change.kind {
        case .removeNode:
            if !tracker.isMember(change.nodeID) {
                return RaftError(.invalidConfChange, "node \(change.nodeID) is not a member")
            }
            if tracker.voters == [change.nodeID] {
                return RaftError(.invalidConfChange, "removing \(change.nodeID) would leave no voter")
            }
        case .addLearner:
            if tracker.voters == [change.nodeID] {
                return RaftError(.invalidConfChange, "demoting \(change.nodeID) would leave no voter")
            }
        case .addNode:
            break
        }
        return nil
    }

    /// Stamps entries with the current term and next indexes, and appends them. Returns false if the
    /// uncommitted-size cap refuses them.
    mutating func appendEntries(_ entries: [Entry]) -> Bool {
        var entries = entries
        let last = log.lastIndex
        var size = 0
        for position in entries.indices {
            entries[position].term = term
            entries[position].index = last + 1 + UInt64(position)
            size += entries[position].payloadSize
        }
        // An entry is always accepted when nothing is outstanding, so a large proposal cannot wedge the leader.
        if uncommittedSize > 0 && size > 0 && uncommittedSize + size > maxUncommittedSize { return false }
        uncommittedSize += size
        let newLast = log.append(entries)
        _ = tracker.progress[id]?.maybeUpdate(newLast)
        _ = maybeCommit()
        return true
    }

    mutating func reduceUncommittedSize(_ entries: [Entry]) {
        guard role == .leader else { return }
        var size = 0
        for entry in entries { size += entry.payloadSize }
        uncommittedSize -= min(size, uncommittedSize)
    }

    /// Advances the commit index to what a quorum has, if that entry is of this term.
    mutating func maybeCommit() -> Bool {
        log.maybeCommit(index: tracker.committed(), term: term)
    }

    var committedEntryInCurrentTerm: Bool { log.termOrZero(log.committed) == term }

    // MARK: - Replication

    mutating func sendAppend(to peer: NodeID) { _ = maybeSendAppend(to: peer, sendIfEmpty: true) }

    /// Sends entries (or a snapshot) to `peer` if its flow control allows. Returns true if a message was sent.
    mutating func maybeSendAppend(to peer: NodeID, sendIfEmpty: Bool) -> Bool {
        guard let progress = tracker.progress[peer], !progress.isPaused else { return false }
        let previous = progress.next - 1
        let previousTerm = try? log.term(at: previous)
        var entries: [Entry] = []
        var entriesError: RaftError?
        if progress.state != .replicate || !progress.inflights.isFull {
            do { entries = try log.entries(from: progress.next, maxSize: maxMsgSize) } catch { entriesError = error }
        }
        if entries.isEmpty && !sendIfEmpty && entriesError == nil && previousTerm != nil { return false }
        guard let previousTerm, entriesError == nil else {
            // The entries the follower needs were compacted: send a snapshot instead.
            guard progress.recentActive else { return false }
            let snapshot: Snapshot
            do { snapshot = try log.snapshot() } catch {
                if error.code == .snapshotTemporarilyUnavailable { return false }
                preconditionFailure("raft: cannot read snapshot: \(error)")
            }
            precondition(!snapshot.isEmpty, "raft: need a snapshot for \(peer) but none exists")
            send(Message(type: .snap, to: peer, snapshot: snapshot))
            tracker.progress[peer]!.becomeSnapshot(index: snapshot.metadata.index)
            return true
        }
        var bytes = 0
        for entry in entries { bytes += entry.payloadSize }
        send(
            Message(
                type: .app,
                to: peer,
                logTerm: previousTerm,
                index: previous,
                entries: entries,
                commit: log.committed
            )
        )
        tracker.progress[peer]!.sentEntries(entries.count, bytes: bytes)
        return true
    }

    mutating func broadcastAppend() {
        for peer in tracker.ids where peer != id { sendAppend(to: peer) }
    }

    mutating func broadcastHeartbeat() {
        broadcastHeartbeat(context: readOnly.lastPendingContext ?? [])
    }

    private mutating func broadcastHeartbeat(context: [UInt8]) {
        for peer in tracker.ids where peer != id {
            // A follower may not have the leader's committed entries yet; never tell it to commit past its match.
            let commit = min(tracker.progress[peer]!.match, log.committed)
            send(Message(type: .heartbeat, to: peer, commit: commit, context: context))
        }
    }

    private mutating func sendTimeoutNow(to peer: NodeID) {
        send(Message(type: .timeoutNow, to: peer))
    }

    mutating func abortLeaderTransfer() { leadTransferee = noneNode }

    // MARK: - Follower handlers

    private mutating func handleAppend(_ m: Message) {
        if m.index < log.committed {
            send(Message(type: .appResp, to: m.from, index: log.committed))
            return
        }
        if let lastNew = log.maybeAppend(index: m.index, logTerm: m.logTerm, commit: m.commit, entries: m.entries) {
            send(Message(type: .appResp, to: m.from, index: lastNew))
            return
        }
        // Reject with a hint: the last index at or below the probe whose term is at most the leader's term
        // there, so the leader can skip a whole term of entries per round trip.
        let hintIndex = min(m.index, log.lastIndex)
        let (index, hintTerm) = log.findConflictByTerm(index: hintIndex, term: m.logTerm)
        send(Message(type: .appResp, to: m.from, logTerm: hintTerm, index: m.index, reject: true, rejectHint: index))
    }

    private mutating func handleHeartbeat(_ m: Message) {
        log.commitTo(m.commit)
        send(Message(type: .heartbeatResp, to: m.from, context: m.context))
    }

    private mutating func handleSnapshot(_ m: Message) {
        guard let snapshot = m.snapshot else { return }
        if restore(snapshot) {
            send(Message(type: .appResp, to: m.from, index: log.lastIndex))
        } else {
            send(Message(type: .appResp, to: m.from, index: log.committed))
        }
    }

    /// Installs a snapshot from the leader. Returns false if it is stale or already covered by our log.
    private mutating func restore(_ snapshot: Snapshot) -> Bool {
        let meta = snapshot.metadata
        if meta.index <= log.committed { return false }
        if role != .follower {
            // Only a leader of our term sends snapshots, so we should already be its follower.
            becomeFollower(term: term + 1, lead: noneNode)
            return false
        }
        // The snapshot's membership may predate the change that added us (a leader sends the latest snapshot it
        // has, which can be older than our addition). That is safe: the change follows in the log, and until
        // it is applied we are not a voter and cannot campaign.
        if log.matchTerm(meta.index, meta.term) {
            // We already have the entry: fast-forward the commit index instead.
            log.commitTo(meta.index)
            return false
        }
        log.restore(snapshot)
        var rebuilt = ProgressTracker(maxInflight: tracker.maxInflight, maxInflightBytes: tracker.maxInflightBytes)
        let next = log.lastIndex + 1
        for voter in meta.confState.voters { rebuilt.set(voter, learner: false, next: next) }
        for learner in meta.confState.learners { rebuilt.set(learner, learner: true, next: next) }
        tracker = rebuilt
        isLearner = meta.confState.learners.contains(id)
        return true
    }

    // MARK: - Reads

    private mutating func sendReadIndexResponse(_ m: Message) {
        switch readOnly.option {
        case .safe:
            readOnly.addRequest(index: log.committed, m)
            // The leader acknowledges itself.
            _ = readOnly.recvAck(from: id, context: m.context)
            broadcastHeartbeat(context: m.context)
        case .leaseBased:
            if let response = respondToReadIndex(m, index: log.committed) { send(response) }
        }
    }

    private mutating func respondToReadIndex(_ request: Message, index: UInt64) -> Message? {
        if request.from == noneNode || request.from == id {
            readStates.append(ReadState(index: index, requestContext: request.context))
            return nil
        }
        return Message(type: .readIndexResp, to: request.from, index: index, context: request.context)
    }

    private mutating func releasePendingReadIndexMessages() {
        guard !pendingReadIndexMessages.isEmpty, committedEntryInCurrentTerm else { return }
        let waiting = pendingReadIndexMessages
        pendingReadIndexMessages = []
        for m in waiting { sendReadIndexResponse(m) }
    }

    // MARK: - Membership

    /// Applies a committed membership change; called when the application has applied its entry.
    mutating func applyConfChange(_ change: ConfChange) {
        let next = log.lastIndex + 1
        switch change.kind {
        case .addNode:
            tracker.set(change.nodeID, learner: false, next: next)
        case .addLearner:
            tracker.set(change.nodeID, learner: true, next: next)
        case .removeNode:
            tracker.remove(change.nodeID)
        }
        isLearner = tracker.learners.contains(id)
        guard role == .leader else { return }
        if !tracker.voters.contains(id) {
            // The leader removed (or demoted) itself: hand over to the most up-to-date voter, then step down.
            let successor = tracker.voters.sorted().first { tracker.progress[$0]?.match == log.lastIndex }
            if let successor { sendTimeoutNow(to: successor) }
            becomeFollower(term: term, lead: noneNode)
            return
        }
        if leadTransferee != noneNode && !tracker.voters.contains(leadTransferee) { abortLeaderTransfer() }
        // The quorum changed, which may commit more; new members need their first append.
        if maybeCommit() {
            broadcastAppend()
        } else {
            for peer in tracker.ids where peer != id { _ = maybeSendAppend(to: peer, sendIfEmpty: false) }
        }
    }
}
