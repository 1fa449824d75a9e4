#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Progress of a long stage on stderr: "tool: label i/T  elapsed 3.1s  eta 12.0s".
/// Shown when stderr is a terminal or when the user asked (--progress); --quiet silences it,
/// so a tool in a pipeline writes nothing on stderr unless asked.
public final class ProgressReporter {
    public let tool: String
    public let enabled: Bool
    let interactive: Bool
    var label = ""
    var total = 0
    var start = Date()
    var lastDraw = Date.distantPast

    /// `enabled` = (stderr is a terminal or `force`) and not `quiet`.
    public init(tool: String, quiet: Bool, force: Bool) {
        self.tool = tool
        interactive = isatty(2) != 0
        enabled = !quiet && (force || interactive)
    }

    /// Starts a stage of `total` steps.
    public func begin(_ label: String, total: Int) {
        self.label = label
        self.total = total
        start = Date()
        lastDraw = .distantPast
    }

    /// Step `done` of the current stage has finished.
    public func update(_ done: Int) {
        guard enabled else { return }
        let now = Date()
        // A terminal line is redrawn at most 10 times a second; a log gets every step.
        if interactive && done < total && now.timeIntervalSince(lastDraw) < 0.1 { return }
        lastDraw = now
        let elapsed = now.timeIntervalSince(start)
        let eta = done > 0 ? elapsed / Double(done) * Double(total - done) : 0
        let line = "\(tool): \(label) \(done)/\(total)  elapsed \(ProgressReporter.format(elapsed))  eta \(ProgressReporter.format(eta))"
        let text = interactive ? "\r\(line)\u{1B}[K" + (done >= total ? "\n" : "") : line + "\n"
        _ = text.withCString { fputs($0, stderr) }
    }

    static func format(_ s: TimeInterval) -> String {
        if s < 60 { return String(format: "%.1fs", s) }
        let m = Int(s) / 60
        return String(format: "%dm%02ds", m, Int(s) % 60)
    }
}
