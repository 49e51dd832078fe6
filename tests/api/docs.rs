//! docs/api.md keeps up with the contract: every RPC of the proto has its section, every
//! message, field and enum value is named there, and so is every reason the service can put in
//! `ErrorInfo` (read from `ApiError::reason` in src/error.rs).

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What the proto declares: RPC names, message names, field names and enum values.
#[derive(Default)]
struct Contract {
    rpcs: Vec<String>,
    messages: Vec<String>,
    fields: Vec<String>,
    enum_values: Vec<String>,
}

/// Reads the declarations line by line (the file is formatted by `buf format`'s rules: one
/// declaration a line; comments start with `//`).
fn contract(proto: &str) -> Contract {
    let mut contract = Contract::default();
    let mut block = "";
    for line in proto.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["rpc", signature, ..] => {
                contract.rpcs.push(signature.split('(').next().unwrap_or_default().to_owned());
            }
            ["message", name, "{"] => {
                contract.messages.push((*name).to_owned());
                block = "message";
            }
            ["enum", name, "{"] => {
                contract.messages.push((*name).to_owned());
                block = "enum";
            }
            ["}"] => block = "",
            [name, "=", _] if block == "enum" => contract.enum_values.push((*name).to_owned()),
            [.., name, "=", _] if block == "message" => contract.fields.push((*name).to_owned()),
            _ => {}
        }
    }
    contract
}

/// The reasons of `ApiError::reason`: the string of each arm of its match.
fn reasons(source: &str) -> Vec<String> {
    let start = source.find("pub fn reason(&self)").expect("ApiError::reason");
    let body = &source[start..];
    let body = &body[..body.find("\n    }\n").expect("end of reason")];
    body.lines().filter_map(|l| l.split("=> \"").nth(1)).map(|r| r.trim_end_matches("\",").to_owned()).collect()
}

#[test]
fn the_api_doc_names_every_rpc_field_and_error_reason() {
    let doc = read("docs/api.md");
    let contract = contract(&read("proto/wxauth/v1/wxauth.proto"));
    let reasons = reasons(&read("src/error.rs"));
    // The parsers found the contract (a vacuous pass is a failure).
    assert_eq!(contract.rpcs.len(), 15, "{:?}", contract.rpcs);
    assert!(contract.fields.len() > 40 && contract.enum_values.len() > 10 && reasons.len() > 20);
    assert!(reasons.iter().any(|r| r == "SIGN_IN_AGAIN"), "{reasons:?}");

    let mut missing = Vec::new();
    for rpc in &contract.rpcs {
        if !doc.contains(&format!("\n## {rpc}\n")) {
            missing.push(format!("a section `## {rpc}`"));
        }
    }
    let named = contract.messages.iter().chain(&contract.fields).chain(&contract.enum_values).chain(&reasons);
    for name in named {
        if !doc.contains(&format!("`{name}`")) {
            missing.push(format!("`{name}`"));
        }
    }
    assert!(missing.is_empty(), "docs/api.md does not mention: {}", missing.join(", "));
}

#[test]
fn every_rpc_section_has_a_grpcurl_line_and_a_snippet() {
    let doc = read("docs/api.md");
    for rpc in contract(&read("proto/wxauth/v1/wxauth.proto")).rpcs {
        let start = doc.find(&format!("\n## {rpc}\n")).unwrap_or_else(|| panic!("no section {rpc}"));
        let section = &doc[start + 1..];
        let section = &section[..section[3..].find("\n## ").map_or(section.len(), |end| end + 3)];
        assert!(section.contains(&format!("wxauth.v1.WeChatOAuthService/{rpc}\n")), "{rpc}: no grpcurl line");
        assert!(section.contains("```js\n") || section.contains("```python\n"), "{rpc}: no Node or Python snippet");
    }
}
