import Foundation
import NIOCore
import NIOPosix
import Synchronization
import WarblerWire

/// Forwarded proposals: application proposals this node takes from its clients for groups another node leads.
///
/// They travel in batches, one request per group and event-loop turn (`ProposeBatch`), instead of one request
/// and one task each: the proposals a connection's read hands over together go to the leader in one frame, in
/// the order they were submitted, and the leader proposes them in that order and answers with one result each.
extension RaftHost {
    /// An application proposal on its way to its group's leader, and who waits for its outcome.
    struct ForwardedProposal: Sendable {
        let tagged: [UInt8]
        let completion: Completion
        /// When the proposal must have an outcome, or fail as `unavailable` ( ``Options/requestTimeout`` after
        /// it was submitted).
        let deadline: ContinuousClock.Instant
    }

    /// Proposals per forwarded request at most, and bytes (the frame stays below the transport's piece size).
    static var maxForwardedProposals: Int { 1024 }
    static var maxForwardedBytes: Int { 512 << 10 }

    /// Queues `tagged` for the leader of `group`. The first proposal queued for a group schedules the send on
    /// the current event loop (or any of the transport's), after whatever else that turn submits.
    func forward(_ tagged: [UInt8], to group: UInt32, completion: @escaping Completion) {
        let proposal = ForwardedProposal(
            tagged: tagged,
            completion: completion,
            deadline: ContinuousClock.now + options.requestTimeout
        )
        let first = forwarding.withLock { queues -> Bool in
            queues[group, default: []].append(proposal)
            return queues[group]!.count == 1
        }
        guard first, let transport else { return }
        let loop = MultiThreadedEventLoopGroup.currentEventLoop ?? transport.group.next()
        loop.execute { self.sendForwarded(group) }
    }

    /// Sends what is queued for `group` to its leader, in requests of at most ``maxForwardedProposals`` and
    /// about ``maxForwardedBytes``. Should this node lead the group by now, or none be known, each proposal
    /// goes the routed way instead.
    func sendForwarded(_ group: UInt32) {
        let proposals = forwarding.withLock { $0.removeValue(forKey: group) ?? [] }
        let leader = leader(of: group)
        guard leader != nodeID, leader != 0, let transport else {
            for proposal in proposals {
                reroute(proposal.tagged, to: group, until: proposal.deadline, proposal.completion)
            }
            return
        }
        var start = proposals.startIndex
        while start < proposals.endIndex {
            var end = start
            var bytes = 0
            while end < proposals.endIndex, end - start < Self.maxForwardedProposals,
                end == start || bytes + proposals[end].tagged.count <= Self.maxForwardedBytes
            {
                bytes += proposals[end].tagged.count
                end += 1
            }
            send(Array(proposals[start..<end]), to: group, leader: leader, over: transport)
            start = end
        }
    }

    private func send(
        _ proposals: [ForwardedProposal],
        to group: UInt32,
        leader: UInt64,
        over transport: PeerTransport
    ) {
        var batch = Warbler_Peer_V1_ProposeBatch()
        batch.group = group
        batch.commands = proposals.map { Data($0.tagged) }
        let timeout = ContinuousClock.now.duration(to: proposals[0].deadline)
        transport.request(.proposeBatch(batch), to: leader, timeout: max(timeout, .milliseconds(1))) { result in
            self.completionScope { self.answer(proposals, to: group, from: leader, with: result) }
        }
    }

    /// Hands each forwarded proposal its result. A proposal the leader did not append (`unavailable`: it no
    /// longer leads the group), or one the request as a whole got no answer for (the connection failed, the
    /// leader is a node from before batches), is routed again until its deadline; commands are idempotent
    /// (the state machine deduplicates a message's id), so a proposal that was appended after all is not
    /// applied twice.
    private func answer(
        _ proposals: [ForwardedProposal],
        to group: UInt32,
        from leader: UInt64,
        with result: Result<PeerResponse, any Error>
    ) {
        guard case .success(let response) = result, case .proposeResults(let answer) = response.body,
            answer.results.count == proposals.count
        else {
            if case .failure(let error) = result {
                logger.debug(
                    "forwarded proposals got no answer",
                    metadata: ["raft.group": "\(group)", "leader": "\(leader)", "error": "\(error)"]
                )
            }
            for proposal in proposals {
                reroute(proposal.tagged, to: group, until: proposal.deadline, proposal.completion)
            }
            return
        }
        for (proposal, result) in zip(proposals, answer.results) {
            switch result.result {
            case .outcome(let bytes):
                do {
                    proposal.completion(.success(try Machine.decodeOutcome([UInt8](bytes))))
                } catch {
                    proposal.completion(.failure(error))
                }
            case .error(let error) where error.code == ClusterError.Code.unavailable.rawValue:
                reroute(proposal.tagged, to: group, until: proposal.deadline, proposal.completion)
            case .error(let error):
                proposal.completion(.failure(ClusterError(error)))
            case nil:
                proposal.completion(.failure(ClusterError(.outcomeUnknown, "node \(leader) sent an empty result")))
            }
        }
    }

    /// Proposals another node forwarded: proposed here in their order, without waiting for one another;
    /// answered once each is applied or refused (`unavailable` when this node does not lead the group).
    func handleForwarded(
        _ batch: Warbler_Peer_V1_ProposeBatch,
        reply: @escaping @Sendable (PeerResponse) -> Void
    ) {
        let answer = ForwardedAnswer(count: batch.commands.count, reply: reply)
        for (position, command) in batch.commands.enumerated() {
            let tagged = [UInt8](command)
            guard tagged.first == Self.applicationTag else {
                answer.set(position, .failure(ClusterError(.refused, "only application proposals travel in batches")))
                continue
            }
            submit(tagged, to: batch.group) { result in
                answer.set(
                    position,
                    result.map { applied in
                        guard case .application(let outcome) = applied else { return [] }
                        return Machine.encode(outcome)
                    }
                )
            }
        }
    }

    /// The results of one forwarded batch as they come in; the answer leaves with the last one.
    final class ForwardedAnswer: Sendable {
        private let state: Mutex<(results: [Warbler_Peer_V1_ProposeResult], missing: Int)>
        private let reply: @Sendable (PeerResponse) -> Void

        init(count: Int, reply: @escaping @Sendable (PeerResponse) -> Void) {
            state = Mutex((Array(repeating: Warbler_Peer_V1_ProposeResult(), count: count), count))
            self.reply = reply
            if count == 0 { send([]) }
        }

        /// Records the result of the proposal at `position` (an encoded outcome, or why it failed).
        func set(_ position: Int, _ result: Result<[UInt8], any Error>) {
            var record = Warbler_Peer_V1_ProposeResult()
            switch result {
            case .success(let outcome): record.outcome = Data(outcome)
            case .failure(let error): record.error = RaftHost.peerError(error)
            }
            let complete = state.withLock { state -> [Warbler_Peer_V1_ProposeResult]? in
                state.results[position] = record
                state.missing -= 1
                return state.missing == 0 ? state.results : nil
            }
            if let complete { send(complete) }
        }

        private func send(_ results: [Warbler_Peer_V1_ProposeResult]) {
            var response = PeerResponse()
            response.proposeResults.results = results
            reply(response)
        }
    }
}
