import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A key press, decoded from the terminal's bytes.
enum Key: Sendable, Equatable {
    case character(Character)
    case enter
    case backspace
    case interrupt  // Ctrl-C
    case endOfInput  // Ctrl-D on an empty line, or the end of a piped input
    case escape
}

/// Writes `text` to standard output at once — `print` buffers when the output is a file, a pipe or a journal
/// rather than a terminal — and gives up quietly when it cannot be written (a closed pipe).
func writeToStandardOutput(_ text: String) {
    var bytes = Array(text.utf8)
    var offset = 0
    while offset < bytes.count {
        let written = bytes.withUnsafeMutableBytes {
            Glibc.write(STDOUT_FILENO, $0.baseAddress! + offset, $0.count - offset)
        }
        if written <= 0 { return }
        offset += written
    }
}

/// The controlling terminal: raw mode while chatting (restored on exit), and keys as an async stream.
final class Terminal: @unchecked Sendable {
    let isInteractive = isatty(STDIN_FILENO) != 0
    private var original = termios()
    private var raw = false

    /// Reads a password without echoing it.
    func readSecret(prompt: String) -> String? {
        write(prompt)
        var saved = termios()
        let interactive = isInteractive && tcgetattr(STDIN_FILENO, &saved) == 0
        if interactive {
            var silent = saved
            silent.c_lflag &= ~tcflag_t(ECHO)
            tcsetattr(STDIN_FILENO, TCSAFLUSH, &silent)
        }
        defer {
            if interactive {
                tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved)
                write("\n")
            }
        }
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while read(STDIN_FILENO, &byte, 1) == 1 {
            if byte == 0x0A || byte == 0x0D { return String(decoding: line, as: UTF8.self) }
            line.append(byte)
        }
        return line.isEmpty ? nil : String(decoding: line, as: UTF8.self)
    }

    /// Switches to character-at-a-time input without echo (output processing stays on).
    func enterRawMode() {
        guard isInteractive, tcgetattr(STDIN_FILENO, &original) == 0 else { return }
        var settings = original
        settings.c_lflag &= ~tcflag_t(ICANON | ECHO | ISIG | IEXTEN)
        settings.c_iflag &= ~tcflag_t(IXON | ICRNL)
        withUnsafeMutableBytes(of: &settings.c_cc) { cc in
            cc[Int(VMIN)] = 1
            cc[Int(VTIME)] = 0
        }
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &settings)
        raw = true
    }

    func restore() {
        guard raw else { return }
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &original)
        raw = false
    }

    func write(_ text: String) { writeToStandardOutput(text) }

    /// Keys, read on a thread of their own (a blocking read must not hold up the async runtime).
    func keys(into sink: @escaping @Sendable (Key) -> Void) {
        let interactive = isInteractive
        let thread = Thread {
            var pending: [UInt8] = []
            var byte: UInt8 = 0
            while read(STDIN_FILENO, &byte, 1) == 1 {
                switch byte {
                case 0x03: sink(.interrupt)
                case 0x04: sink(.endOfInput)
                case 0x0D, 0x0A: sink(.enter)
                case 0x7F, 0x08: sink(.backspace)
                case 0x1B: sink(.escape)
                default:
                    pending.append(byte)
                    // Collect a whole UTF-8 sequence before decoding it.
                    let expected = pending[0] < 0x80 ? 1 : pending[0] < 0xE0 ? 2 : pending[0] < 0xF0 ? 3 : 4
                    if pending.count >= expected {
                        for character in String(decoding: pending, as: UTF8.self) { sink(.character(character)) }
                        pending = []
                    }
                }
            }
            if !interactive { sink(.enter) }
            sink(.endOfInput)
        }
        thread.start()
    }
}
