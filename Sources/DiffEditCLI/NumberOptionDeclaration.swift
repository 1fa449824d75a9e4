import ArgumentParser
import DiffEditCore

// Every numeric option is declared from its NumberOption, once:
//
//     @Option(StageNumbers.steps, "Inference steps of the schedule", default: 50)
//     var steps = 50
//     @Option(StageNumbers.guidance, StageNumbers.guidanceAbstract, defaultText: "the model's diffedit_defaults.json, else 7.5")
//     var guidance: Float?
//
// The option's name (`--steps`), its domain in --help, the parse that refuses a value outside
// the domain (NumberOption.transform) and `.unconditional` parsing — which lets "-1" through as a
// value, so that it meets the domain and gets its range error instead of ArgumentParser's
// "missing value" — all come from the NumberOption, as llama.cpp's common/arg.cpp declares each
// option once.

extension NumberOption {
    /// The option's name without its dashes, as ArgumentParser names it.
    var longName: NameSpecification { .customLong(String(name.drop(while: { $0 == "-" }))) }
}

extension Option where Value: OptionNumber {
    /// A numeric option with a fixed default (the property's initial value).
    public init(wrappedValue: Value, _ number: NumberOption<Value>, _ abstract: String) {
        self.init(wrappedValue: wrappedValue, name: number.longName, parsing: .unconditional,
                  help: number.help(abstract, default: wrappedValue), transform: number.transform)
    }
}

extension Option {
    /// A numeric option without a fixed default: nil when not given, `defaultText` says what is
    /// used then (the model's defaults file, the stack's value…).
    public init<T: OptionNumber>(_ number: NumberOption<T>, _ abstract: String, defaultText: String?) where Value == T? {
        self.init(name: number.longName, parsing: .unconditional, help: number.help(abstract, defaultText: defaultText),
                  transform: number.transform)
    }

    /// A numeric option that is nil when not given, whose default `shown` is applied elsewhere
    /// (unet-bench's kernel policy).
    public init<T: OptionNumber>(_ number: NumberOption<T>, _ abstract: String, default shown: T) where Value == T? {
        self.init(name: number.longName, parsing: .unconditional, help: number.help(abstract, default: shown),
                  transform: number.transform)
    }
}
