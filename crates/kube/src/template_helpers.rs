//! The Handlebars helpers registered for the templates: what templates
//! cannot do cleanly themselves.
//!
//! - `quote v`: `v` as a double-quoted YAML string (JSON string syntax, which
//!   YAML reads as is), so no value can break the document's structure.
//! - `json v`: `v` as compact JSON, a YAML flow value (lists, maps).
//! - `quantity v`: a Kubernetes quantity, checked and quoted.
//! - `indent n text`: every line of `text` indented by `n` spaces, for block
//!   scalars that embed a file.
//! - `labels name`: the standard labels of an object of component `name`, as
//!   a flow map; `selector name`: the subset a selector matches on.
//! - `if` and `unless`, replaced by strict versions: the built-ins take a
//!   misspelled variable for `false` even in strict mode.
//!
//! Guarantees: a helper given a variable that is not in the context fails
//! with `MissingVariable`, as strict mode does for `{{name}}`.

use handlebars::{
    Context, Handlebars, Helper, HelperDef, HelperResult, JsonTruthy, JsonValue, Output,
    PathAndJson, RenderContext, RenderErrorReason, Renderable,
};
use taskctl_core::profile::value::{Checked, Quantity};

/// Registers every helper on `reg`.
pub fn register(reg: &mut Handlebars<'_>) {
    reg.register_helper("quote", Box::new(quote));
    reg.register_helper("json", Box::new(json));
    reg.register_helper("quantity", Box::new(quantity));
    reg.register_helper("indent", Box::new(indent));
    reg.register_helper("labels", Box::new(labels));
    reg.register_helper("selector", Box::new(selector));
    reg.register_helper("if", Box::new(StrictIf { positive: true }));
    reg.register_helper("unless", Box::new(StrictIf { positive: false }));
}

/// Parameter `idx`, failing on a variable missing from the context.
fn param<'a, 'rc>(
    h: &'a Helper<'rc>,
    idx: usize,
) -> Result<&'a PathAndJson<'rc>, RenderErrorReason> {
    let p = h
        .param(idx)
        .ok_or(RenderErrorReason::ParamNotFoundForIndex("helper", idx))?;
    if p.is_value_missing() {
        return Err(RenderErrorReason::MissingVariable(
            p.relative_path().cloned(),
        ));
    }
    Ok(p)
}

fn scalar_text(v: &JsonValue) -> Result<String, RenderErrorReason> {
    match v {
        JsonValue::String(s) => Ok(s.clone()),
        JsonValue::Number(n) => Ok(n.to_string()),
        JsonValue::Bool(b) => Ok(b.to_string()),
        other => Err(RenderErrorReason::Other(format!(
            "expected a string, number or boolean, found `{other}`"
        ))),
    }
}

fn quote(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let text = scalar_text(param(h, 0)?.value())?;
    out.write(&JsonValue::String(text).to_string())?;
    Ok(())
}

fn json(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    out.write(&param(h, 0)?.value().to_string())?;
    Ok(())
}

fn quantity(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let text = scalar_text(param(h, 0)?.value())?;
    let q = Checked::<Quantity>::new(text.clone());
    if let Some(why) = q.error() {
        return Err(RenderErrorReason::Other(why).into());
    }
    out.write(&JsonValue::String(text).to_string())?;
    Ok(())
}

fn indent(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let n = param(h, 0)?
        .value()
        .as_u64()
        .ok_or_else(|| RenderErrorReason::Other("indent: expected a number of spaces".into()))?;
    let text = scalar_text(param(h, 1)?.value())?;
    let pad = " ".repeat(usize::try_from(n).unwrap_or(0));
    let indented: Vec<String> = text
        .lines()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{pad}{l}")
            }
        })
        .collect();
    out.write(&indented.join("\n"))?;
    Ok(())
}

fn root_str(ctx: &Context, pointer: &str) -> Result<String, RenderErrorReason> {
    ctx.data()
        .pointer(pointer)
        .and_then(JsonValue::as_str)
        .map(str::to_string)
        .ok_or_else(|| RenderErrorReason::MissingVariable(Some(pointer.replace('/', "."))))
}

fn labels(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    ctx: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let name = scalar_text(param(h, 0)?.value())?;
    let mut map = serde_json::Map::new();
    if let Some(extra) = ctx
        .data()
        .pointer("/release/labels")
        .and_then(JsonValue::as_object)
    {
        for (k, v) in extra {
            map.insert(k.clone(), v.clone());
        }
    }
    map.insert("app.kubernetes.io/name".into(), name.into());
    map.insert(
        "app.kubernetes.io/instance".into(),
        root_str(ctx, "/release/name")?.into(),
    );
    map.insert(
        "app.kubernetes.io/part-of".into(),
        "task-execution-layer".into(),
    );
    map.insert("app.kubernetes.io/managed-by".into(), "taskctl".into());
    map.insert(
        "taskctl.dev/environment".into(),
        root_str(ctx, "/release/environment_label")?.into(),
    );
    out.write(&JsonValue::Object(map).to_string())?;
    Ok(())
}

fn selector(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    ctx: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let name = scalar_text(param(h, 0)?.value())?;
    let map = serde_json::json!({
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/instance": root_str(ctx, "/release/name")?,
    });
    out.write(&map.to_string())?;
    Ok(())
}

/// `if`/`unless` that fail on a missing variable and otherwise behave as the
/// built-ins (`null`, `false`, `0`, `""` and `[]` are false).
struct StrictIf {
    positive: bool,
}

impl HelperDef for StrictIf {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let include_zero = h
            .hash_get("includeZero")
            .and_then(|v| v.value().as_bool())
            .unwrap_or(false);
        let truthy = param(h, 0)?.value().is_truthy(include_zero);
        let branch = if truthy == self.positive {
            h.template()
        } else {
            h.inverse()
        };
        match branch {
            Some(t) => t.render(r, ctx, rc, out),
            None => Ok(()),
        }
    }
}
