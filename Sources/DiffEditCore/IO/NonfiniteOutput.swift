/// The last line of defence of "no tool writes a NaN it produced itself": every record a tool
/// writes through `CLI.tensorOutput` (and every image vae-decode writes) is checked, and one
/// holding NaN or ±Inf that no input brought in stops the tool with one line instead of being
/// written. Option domains and config checks keep the known causes out; this catches the rest
/// (a model whose weights overflow, a config value not yet checked).
public enum NonfiniteOutput {
    /// Set once an input holding NaN or ±Inf was let through (--allow-nonfinite): from then on
    /// this process's outputs may hold them too, since the user asked for that.
    nonisolated(unsafe) public private(set) static var inputAdmitted = false

    static func admitInput() { inputAdmitted = true }

    /// Throws when `values` hold NaN or ±Inf that no admitted input explains; `what` names the
    /// output ("record 'latents'").
    public static func check(_ values: [Float], what: String) throws {
        guard !inputAdmitted else { return }
        var nan = 0, inf = 0
        for x in values where !x.isFinite { if x.isNaN { nan += 1 } else { inf += 1 } }
        guard nan + inf > 0 else { return }
        throw ToolError("\(what) came out holding \(nan) NaN and \(inf) infinite values from finite inputs, so nothing more is written — the computation overflowed: check the inputs' range (tensor stats) and the model's weights and configs")
    }
}
