import Foundation

/// Runs a program to its end without holding a thread while it runs.
///
/// Async tests share the cooperative pool, which has as many threads as the machine has cores (two here): a
/// test that blocks one in `waitUntilExit()` or a pipe read for the seconds a child process runs halves what
/// every other test running beside it gets, and their timing checks (login deadlines, leader elections,
/// reconnects) fail under a full parallel run. So the child writes to temporary files (no pipe can fill up and
/// stall it) and the caller polls for its exit with `Task.sleep`.
enum ChildProcess {
    /// What a finished child left: its exit status (128 + the signal when a signal ended it), standard output
    /// and standard error.
    struct Finished {
        var status: Int32
        var output: Data
        var errors: Data
        var outputText: String { String(decoding: output, as: UTF8.self) }
        var errorText: String { String(decoding: errors, as: UTF8.self) }
    }

    /// Runs `executable` with `arguments` (and `environment` instead of the test's, when given), writing `input`
    /// to its standard input, and returns once it has exited.
    static func run(
        _ executable: String,
        _ arguments: [String],
        environment: [String: String]? = nil,
        input: Data? = nil
    ) async throws -> Finished {
        let folder = NSTemporaryDirectory() + "warbler-child-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let outputPath = folder + "/out"
        let errorsPath = folder + "/err"
        for path in [outputPath, errorsPath] { _ = FileManager.default.createFile(atPath: path, contents: nil) }
        let output = try FileHandle(forWritingTo: URL(fileURLWithPath: outputPath))
        let errors = try FileHandle(forWritingTo: URL(fileURLWithPath: errorsPath))
        defer {
            try? output.close()
            try? errors.close()
        }

        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let environment { process.environment = environment }
        process.standardOutput = output
        process.standardError = errors
        let stdin = input.map { _ in Pipe() }
        process.standardInput = stdin ?? FileHandle.nullDevice
        try process.run()
        if let input, let stdin {
            // Small inputs (a password line): they fit in the pipe, so the write does not wait for the child.
            stdin.fileHandleForWriting.write(input)
            try stdin.fileHandleForWriting.close()
        }
        await process.exited()
        return Finished(
            status: process.terminationReason == .uncaughtSignal
                ? 128 + process.terminationStatus : process.terminationStatus,
            output: FileManager.default.contents(atPath: outputPath) ?? Data(),
            errors: FileManager.default.contents(atPath: errorsPath) ?? Data()
        )
    }
}

extension Process {
    /// Returns once the process has exited, checking every 10 ms instead of blocking a thread.
    func exited() async {
        while isRunning { try? await Task.sleep(nanoseconds: 10_000_000) }
        // Reaped already: this returns at once and makes the exit status readable.
        waitUntilExit()
    }
}
