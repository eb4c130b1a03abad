//! Editor history: the diff of two script versions and the three-way merge of
//! script graphs. Pure functions over JSON values: no I/O, no database.
//!
//! A version is a pair (`graphJson`, `variablesDef`). `graphJson` is an object
//! with the element arrays `nodes` and `edges` and possibly other members;
//! `variablesDef` is any JSON value (null when absent).
//!
//! # Matching elements
//!
//! Elements of `nodes` and `edges` are matched by their `id` member, compared
//! as JSON values (`1` and `"1"` differ). An element without an id (not an
//! object, no `id` member, or `id: null`), or whose id appears more than once
//! in any of the graphs compared, is matched by its whole value: such elements
//! form a multiset and can only be added or removed, never changed.
//!
//! Ids and values are hash-map keys (borrowed, hashed consistently with JSON
//! equality), so both diff and merge run in linear time.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

pub use json_patch::Patch;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The graph members that hold elements; every other member is a plain value.
const ELEMENT_ARRAYS: [&str; 2] = ["nodes", "edges"];

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// The difference between an old and a new version.
///
/// Serializes (camelCase) as
/// `{ nodes, edges, variablesDef, graph, summary }`; the HTTP layer adds
/// `scriptId`, `from` and `to`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphDiff {
    /// How the `nodes` arrays differ.
    pub nodes: ElementDiff,
    /// How the `edges` arrays differ.
    pub edges: ElementDiff,
    /// RFC 6902 operations turning the old `variablesDef` into the new one.
    pub variables_def: Patch,
    /// RFC 6902 operations turning the old graph object, without `nodes` and
    /// `edges`, into the new one.
    pub graph: Patch,
    /// Counts of the element lists.
    pub summary: DiffSummary,
}

impl GraphDiff {
    /// True when the two versions are the same.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
            && self.edges.is_empty()
            && self.variables_def.is_empty()
            && self.graph.is_empty()
    }
}

/// How one element array (`nodes` or `edges`) differs between two versions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ElementDiff {
    /// Elements only in the new version, in the new version's order.
    pub added: Vec<Value>,
    /// Elements only in the old version, in the old version's order.
    pub removed: Vec<Value>,
    /// Elements whose id is on both sides with different values, in the new
    /// version's order.
    pub changed: Vec<ChangedElement>,
}

impl ElementDiff {
    /// True when the arrays hold the same elements.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// An element matched by id whose value differs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangedElement {
    /// The element's `id` member.
    pub id: Value,
    /// The old element.
    pub before: Value,
    /// The new element.
    pub after: Value,
    /// RFC 6902 operations turning `before` into `after`.
    pub patch: Patch,
}

/// The sizes of the element lists of a [`GraphDiff`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiffSummary {
    pub nodes_added: usize,
    pub nodes_removed: usize,
    pub nodes_changed: usize,
    pub edges_added: usize,
    pub edges_removed: usize,
    pub edges_changed: usize,
}

/// What a merge conflict is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ConflictKind {
    /// An element of `nodes`.
    Node,
    /// An element of `edges`.
    Edge,
    /// A `graphJson` member other than `nodes` and `edges`.
    Graph,
    /// `variablesDef`: one key when all three sides are objects, else the
    /// whole value.
    VariablesDef,
}

/// One thing both sides changed differently.
///
/// A value missing on a side (deleted, or never there) is `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    pub kind: ConflictKind,
    /// The element's `id`; for `graph` and `variablesDef`, the member or key
    /// name as a JSON string (null for a whole-value `variablesDef`).
    pub id: Value,
    pub base: Value,
    pub theirs: Value,
    pub ours: Value,
}

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

/// The element array `member` of a graph; a missing or non-array member is
/// empty.
fn elements<'a>(graph: &'a Value, member: &str) -> &'a [Value] {
    graph
        .get(member)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The members of a graph other than `nodes` and `edges`, as an object (empty
/// when the graph is not an object).
fn plain_members(graph: &Value) -> Value {
    let members = graph
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !ELEMENT_ARRAYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Value::Object(members)
}

/// A JSON value used as a hash-map key: equal values (as `serde_json`
/// compares them) hash alike, whatever the order of object keys. Borrowed, so
/// keying an element allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Canon<'a>(&'a Value);

impl Hash for Canon<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_value(self.0, state);
    }
}

/// Feeds `value` to `state`, consistently with `Value`'s equality.
fn hash_value<H: Hasher>(value: &Value, state: &mut H) {
    match value {
        Value::Null => state.write_u8(0),
        Value::Bool(b) => state.write_u8(if *b { 1 } else { 2 }),
        Value::Number(n) => {
            state.write_u8(3);
            if let Some(u) = n.as_u64() {
                state.write_u64(u);
            } else if let Some(i) = n.as_i64() {
                state.write_i64(i);
            } else {
                // -0.0 == 0.0, so both hash as 0.0.
                let f = n.as_f64().unwrap_or(0.0);
                state.write_u64(if f == 0.0 { 0 } else { f.to_bits() });
            }
        }
        Value::String(text) => {
            state.write_u8(4);
            text.hash(state);
        }
        Value::Array(items) => {
            state.write_u8(5);
            state.write_usize(items.len());
            items.iter().for_each(|item| hash_value(item, state));
        }
        Value::Object(map) => {
            // Entries hash on their own and add up: the key order is moot.
            let mut sum = 0u64;
            for (key, item) in map {
                let mut entry = DefaultHasher::new();
                key.hash(&mut entry);
                hash_value(item, &mut entry);
                sum = sum.wrapping_add(entry.finish());
            }
            state.write_u8(6);
            state.write_usize(map.len());
            state.write_u64(sum);
        }
    }
}

/// The id of an element: its non-null `id` member, if any.
fn id_of(element: &Value) -> Option<Canon<'_>> {
    match element.get("id") {
        None | Some(Value::Null) => None,
        Some(id) => Some(Canon(id)),
    }
}

/// How an element is matched across versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum MatchKey<'a> {
    /// By its id.
    Id(Canon<'a>),
    /// By its whole value.
    Value(Canon<'a>),
}

/// One side's element array, indexed by match key.
struct Indexed<'a> {
    /// The elements with their keys, in the array's order.
    keyed: Vec<(&'a Value, MatchKey<'a>)>,
    /// Elements matched by id, by id.
    by_id: HashMap<Canon<'a>, &'a Value>,
    /// How many copies of each value-matched element.
    counts: HashMap<Canon<'a>, usize>,
}

/// The first pass over one side: its ids, and those it repeats.
struct Scan<'a> {
    elements: &'a [Value],
    /// The id of each element, in order.
    ids: Vec<Option<Canon<'a>>>,
    /// The first element with each id.
    by_id: HashMap<Canon<'a>, &'a Value>,
    /// Ids seen more than once (once per extra copy).
    repeated: Vec<Canon<'a>>,
}

impl<'a> Scan<'a> {
    /// Scans `elements` for ids.
    fn new(elements: &'a [Value]) -> Self {
        let mut by_id = HashMap::with_capacity(elements.len());
        let mut repeated = Vec::new();
        let ids = elements
            .iter()
            .map(|element| {
                let id = id_of(element)?;
                if by_id.insert(id, element).is_some() {
                    repeated.push(id);
                }
                Some(id)
            })
            .collect();
        Scan {
            elements,
            ids,
            by_id,
            repeated,
        }
    }

    /// The side's index, once the ids repeated on any side are known: those
    /// are matched by value.
    fn finish(self, repeated: &HashSet<Canon<'a>>) -> Indexed<'a> {
        let mut by_id = self.by_id;
        let is_repeated = |id: &Canon<'a>| !repeated.is_empty() && repeated.contains(id);
        if !repeated.is_empty() {
            by_id.retain(|id, _| !is_repeated(id));
        }
        let mut counts = HashMap::new();
        let keyed = self
            .elements
            .iter()
            .zip(self.ids)
            .map(|(element, id)| match id {
                Some(id) if !is_repeated(&id) => (element, MatchKey::Id(id)),
                _ => {
                    let value = Canon(element);
                    *counts.entry(value).or_insert(0) += 1;
                    (element, MatchKey::Value(value))
                }
            })
            .collect();
        Indexed {
            keyed,
            by_id,
            counts,
        }
    }
}

impl<'a> Indexed<'a> {
    /// Indexes the element arrays of `N` versions compared with each other:
    /// an id repeated in any of them is matched by value in all.
    fn sides<const N: usize>(arrays: [&'a [Value]; N]) -> [Indexed<'a>; N] {
        let scans = arrays.map(Scan::new);
        let repeated: HashSet<Canon<'a>> = scans
            .iter()
            .flat_map(|scan| scan.repeated.iter().copied())
            .collect();
        scans.map(|scan| scan.finish(&repeated))
    }

    /// How many copies of the value-matched element `value` this side has.
    fn count(&self, value: &Canon<'a>) -> usize {
        self.counts.get(value).copied().unwrap_or(0)
    }
}

/// Takes one unit from `budget[key]`: true if there was one left.
fn take<'a>(budget: &mut HashMap<Canon<'a>, usize>, key: &Canon<'a>) -> bool {
    match budget.get_mut(key) {
        Some(left) if *left > 0 => {
            *left -= 1;
            true
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// Diff
// ---------------------------------------------------------------------------

/// The diff from the old version (`old_graph`, `old_vars`) to the new one.
///
/// For the empty old version pass `{"nodes":[],"edges":[]}` and null. A
/// `nodes` or `edges` member that is not an array counts as empty.
pub fn diff(old_graph: &Value, old_vars: &Value, new_graph: &Value, new_vars: &Value) -> GraphDiff {
    let nodes = diff_elements(elements(old_graph, "nodes"), elements(new_graph, "nodes"));
    let edges = diff_elements(elements(old_graph, "edges"), elements(new_graph, "edges"));
    let summary = DiffSummary {
        nodes_added: nodes.added.len(),
        nodes_removed: nodes.removed.len(),
        nodes_changed: nodes.changed.len(),
        edges_added: edges.added.len(),
        edges_removed: edges.removed.len(),
        edges_changed: edges.changed.len(),
    };
    GraphDiff {
        nodes,
        edges,
        variables_def: json_patch::diff(old_vars, new_vars),
        graph: json_patch::diff(&plain_members(old_graph), &plain_members(new_graph)),
        summary,
    }
}

/// The diff of one element array (see the module doc for the matching).
pub fn diff_elements(old: &[Value], new: &[Value]) -> ElementDiff {
    let [old, new] = Indexed::sides([old, new]);
    // Copies of a value-matched element present on both sides are unchanged.
    let common: HashMap<Canon<'_>, usize> = old
        .counts
        .iter()
        .map(|(value, &n)| (*value, n.min(new.count(value))))
        .collect();
    let (added, changed) = added_and_changed(&old, &new, common.clone());
    let removed = removed(&old, &new, common);
    ElementDiff {
        added,
        removed,
        changed,
    }
}

/// The added and changed elements, in the new side's order. `common` holds
/// the number of value-matched copies the two sides share.
fn added_and_changed<'a>(
    old: &Indexed<'a>,
    new: &Indexed<'a>,
    mut common: HashMap<Canon<'a>, usize>,
) -> (Vec<Value>, Vec<ChangedElement>) {
    let mut added = Vec::new();
    let mut changed = Vec::new();
    for (element, key) in &new.keyed {
        match key {
            MatchKey::Id(id) => match old.by_id.get(id) {
                Some(before) if *before == *element => {}
                Some(before) => changed.push(ChangedElement {
                    id: element.get("id").cloned().unwrap_or(Value::Null),
                    before: (*before).clone(),
                    after: (*element).clone(),
                    patch: json_patch::diff(before, element),
                }),
                None => added.push((*element).clone()),
            },
            MatchKey::Value(value) => {
                if !take(&mut common, value) {
                    added.push((*element).clone());
                }
            }
        }
    }
    (added, changed)
}

/// The removed elements, in the old side's order. `common` holds the number
/// of value-matched copies the two sides share.
fn removed<'a>(
    old: &Indexed<'a>,
    new: &Indexed<'a>,
    mut common: HashMap<Canon<'a>, usize>,
) -> Vec<Value> {
    let mut removed = Vec::new();
    for (element, key) in &old.keyed {
        let gone = match key {
            MatchKey::Id(id) => !new.by_id.contains_key(id),
            MatchKey::Value(value) => !take(&mut common, value),
        };
        if gone {
            removed.push((*element).clone());
        }
    }
    removed
}

// ---------------------------------------------------------------------------
// Merge
// ---------------------------------------------------------------------------

/// The outcome of merging one element, member or key.
enum Outcome<'a> {
    /// The merged value; `None` means absent (deleted, or never there).
    Take(Option<&'a Value>),
    /// Both sides changed it, differently.
    Conflict,
}

/// Three-way merges one value: a side that left it as in `base` takes the
/// other side's change (deletion included); the same change on both sides is
/// one change; anything else is a conflict.
fn merge_value<'a>(
    base: Option<&'a Value>,
    theirs: Option<&'a Value>,
    ours: Option<&'a Value>,
) -> Outcome<'a> {
    if theirs == ours || ours == base {
        Outcome::Take(theirs)
    } else if theirs == base {
        Outcome::Take(ours)
    } else {
        Outcome::Conflict
    }
}

/// The conflict entry for one element, member or key.
fn conflict(
    kind: ConflictKind,
    id: Value,
    base: Option<&Value>,
    theirs: Option<&Value>,
    ours: Option<&Value>,
) -> Conflict {
    let or_null = |v: Option<&Value>| v.cloned().unwrap_or(Value::Null);
    Conflict {
        kind,
        id,
        base: or_null(base),
        theirs: or_null(theirs),
        ours: or_null(ours),
    }
}

/// How many copies of a value-matched element the merge keeps, from the
/// copies in base, theirs and ours.
///
/// Each side's change is its count minus base's. Changes in the same
/// direction overlap (both adding a copy add one copy; the larger change
/// wins); changes in opposite directions add up. So a side that kept base's
/// count takes the other side's, and value-matched elements never conflict.
fn merged_count(base: usize, theirs: usize, ours: usize) -> usize {
    let (b, t, o) = (base as i64, theirs as i64, ours as i64);
    let (dt, d_o) = (t - b, o - b);
    let delta = if dt >= 0 && d_o >= 0 {
        dt.max(d_o)
    } else if dt <= 0 && d_o <= 0 {
        dt.min(d_o)
    } else {
        dt + d_o
    };
    usize::try_from(b + delta).unwrap_or(0)
}

/// Three-way merges two versions that share a base.
///
/// Each argument is (`graphJson`, `variablesDef`); the result is the merged
/// pair. Nodes and edges merge element by element (matched as in [`diff`]),
/// whole elements at a time: two sides changing different members of one
/// node conflict. Merged arrays keep theirs' order; elements added only by
/// ours are appended in ours' order. Value-matched elements (no id, or a
/// repeated id) merge as multisets (see `merged_count`) and never conflict.
/// Other graph members merge as whole values, and so does `variablesDef`,
/// key by key when it is an object on all three sides.
///
/// On conflicts returns all of them: nodes, then edges (each in the merged
/// order), then graph members, then `variablesDef`.
pub fn merge(
    base: (&Value, &Value),
    theirs: (&Value, &Value),
    ours: (&Value, &Value),
) -> Result<(Value, Value), Vec<Conflict>> {
    let mut conflicts = Vec::new();
    let graph = merge_graph(base.0, theirs.0, ours.0, &mut conflicts);
    let vars = merge_variables(base.1, theirs.1, ours.1, &mut conflicts);
    if conflicts.is_empty() {
        Ok((graph, vars))
    } else {
        Err(conflicts)
    }
}

/// Merges the graph objects; conflicts go to `conflicts`.
fn merge_graph(base: &Value, theirs: &Value, ours: &Value, conflicts: &mut Vec<Conflict>) -> Value {
    let mut merged = Map::new();
    for (member, kind) in ELEMENT_ARRAYS
        .into_iter()
        .zip([ConflictKind::Node, ConflictKind::Edge])
    {
        let arrays = [base, theirs, ours].map(|graph| elements(graph, member));
        let array = merge_elements(kind, arrays, conflicts);
        merged.insert(member.to_owned(), Value::Array(array));
    }
    let members = merge_members(
        ConflictKind::Graph,
        [base, theirs, ours].map(Value::as_object),
        &ELEMENT_ARRAYS,
        conflicts,
    );
    merged.extend(members);
    Value::Object(merged)
}

/// Merges `variablesDef`: key by key when all three sides are objects, else
/// as a whole value (conflict id null).
fn merge_variables(
    base: &Value,
    theirs: &Value,
    ours: &Value,
    conflicts: &mut Vec<Conflict>,
) -> Value {
    if let (Some(b), Some(t), Some(o)) = (base.as_object(), theirs.as_object(), ours.as_object()) {
        let kind = ConflictKind::VariablesDef;
        return Value::Object(merge_members(
            kind,
            [Some(b), Some(t), Some(o)],
            &[],
            conflicts,
        ));
    }
    match merge_value(Some(base), Some(theirs), Some(ours)) {
        Outcome::Take(value) => value.cloned().unwrap_or(Value::Null),
        Outcome::Conflict => {
            let kind = ConflictKind::VariablesDef;
            conflicts.push(conflict(
                kind,
                Value::Null,
                Some(base),
                Some(theirs),
                Some(ours),
            ));
            Value::Null
        }
    }
}

/// The member `name` of an optional object.
fn member<'a>(object: Option<&'a Map<String, Value>>, name: &str) -> Option<&'a Value> {
    object.and_then(|m| m.get(name))
}

/// Merges the members of three objects (base, theirs, ours; `None` has no
/// members) as whole values, leaving out the names in `skip`. The result has
/// theirs' members in their order, then those only ours has.
fn merge_members(
    kind: ConflictKind,
    [base, theirs, ours]: [Option<&Map<String, Value>>; 3],
    skip: &[&str],
    conflicts: &mut Vec<Conflict>,
) -> Map<String, Value> {
    let their_names = theirs.into_iter().flat_map(|m| m.keys());
    let our_names = ours
        .into_iter()
        .flat_map(|m| m.keys())
        .filter(|name| member(theirs, name).is_none());
    let mut merged = Map::new();
    for name in their_names.chain(our_names) {
        if skip.contains(&name.as_str()) {
            continue;
        }
        let (b, t, o) = (member(base, name), member(theirs, name), member(ours, name));
        match merge_value(b, t, o) {
            Outcome::Take(Some(value)) => {
                merged.insert(name.clone(), value.clone());
            }
            Outcome::Take(None) => {}
            Outcome::Conflict => {
                conflicts.push(conflict(kind, Value::String(name.clone()), b, t, o));
            }
        }
    }
    merged
}

/// Merges one element array (`[base, theirs, ours]`); conflicts go to
/// `conflicts` in the merged order.
fn merge_elements(
    kind: ConflictKind,
    arrays: [&[Value]; 3],
    conflicts: &mut Vec<Conflict>,
) -> Vec<Value> {
    let [base, theirs, ours] = Indexed::sides(arrays);
    let mut merger = ElementMerger {
        kind,
        base: &base,
        theirs: &theirs,
        ours: &ours,
        emitted: HashMap::new(),
        merged: Vec::with_capacity(theirs.keyed.len()),
        conflicts,
    };
    for (element, key) in &theirs.keyed {
        merger.visit(element, key);
    }
    for (element, key) in &ours.keyed {
        let in_theirs = matches!(key, MatchKey::Id(id) if theirs.by_id.contains_key(id));
        if !in_theirs {
            merger.visit(element, key);
        }
    }
    merger.merged
}

/// The state of one element array's merge: theirs' elements are visited in
/// order, then ours'.
struct ElementMerger<'a, 'c> {
    kind: ConflictKind,
    base: &'a Indexed<'a>,
    theirs: &'a Indexed<'a>,
    ours: &'a Indexed<'a>,
    /// Copies of each value-matched element already in `merged`.
    emitted: HashMap<Canon<'a>, usize>,
    merged: Vec<Value>,
    conflicts: &'c mut Vec<Conflict>,
}

impl<'a> ElementMerger<'a, '_> {
    /// Visits one element of theirs or ours (an id is visited once).
    fn visit(&mut self, element: &Value, key: &MatchKey<'a>) {
        match key {
            MatchKey::Id(id) => self.visit_id(element, id),
            MatchKey::Value(value) => {
                let wanted = merged_count(
                    self.base.count(value),
                    self.theirs.count(value),
                    self.ours.count(value),
                );
                let done = self.emitted.entry(*value).or_insert(0);
                if *done < wanted {
                    *done += 1;
                    self.merged.push(element.clone());
                }
            }
        }
    }

    /// Merges the id-matched element `id`, seen as `element`.
    fn visit_id(&mut self, element: &Value, id: &Canon<'a>) {
        let b = self.base.by_id.get(id).copied();
        let t = self.theirs.by_id.get(id).copied();
        let o = self.ours.by_id.get(id).copied();
        match merge_value(b, t, o) {
            Outcome::Take(Some(value)) => self.merged.push(value.clone()),
            Outcome::Take(None) => {}
            Outcome::Conflict => {
                let id = element.get("id").cloned().unwrap_or(Value::Null);
                self.conflicts.push(conflict(self.kind, id, b, t, o));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn graph(nodes: Value, edges: Value) -> Value {
        json!({ "nodes": nodes, "edges": edges })
    }

    fn apply(doc: &Value, patch: &Patch) -> Value {
        let mut doc = doc.clone();
        json_patch::patch(&mut doc, patch).unwrap();
        doc
    }

    fn empty() -> Value {
        graph(json!([]), json!([]))
    }

    // ----- diff -----

    #[test]
    fn identical_graphs_give_an_empty_diff() {
        let g = json!({
            "nodes": [{"id": "a", "x": 1}, {"label": "no id"}, {"id": 1}],
            "edges": [{"id": "e", "from": "a", "to": 1}],
            "meta": {"zoom": 2}
        });
        let vars = json!({"name": {"type": "string"}});
        let d = diff(&g, &vars, &g, &vars);
        assert!(d.is_empty());
        assert_eq!(d.summary, DiffSummary::default());
        let wire = serde_json::to_value(&d).unwrap();
        assert_eq!(
            wire,
            json!({
                "nodes": {"added": [], "removed": [], "changed": []},
                "edges": {"added": [], "removed": [], "changed": []},
                "variablesDef": [], "graph": [],
                "summary": {"nodesAdded": 0, "nodesRemoved": 0, "nodesChanged": 0,
                            "edgesAdded": 0, "edgesRemoved": 0, "edgesChanged": 0}
            })
        );
    }

    #[test]
    fn added_removed_and_changed_elements() {
        let old = graph(
            json!([{"id": "n1", "label": "Hello"}, {"id": "n2"}, {"id": "n3"}]),
            json!([{"id": "e1", "from": "n1", "to": "n2"}]),
        );
        let new = graph(
            json!([{"id": "n4"}, {"id": "n1", "label": "Hi"}, {"id": "n3"}, {"id": "n5"}]),
            json!([{"id": "e2", "from": "n1", "to": "n3"}]),
        );
        let d = diff(&old, &Value::Null, &new, &Value::Null);
        assert_eq!(
            d.nodes.added,
            vec![json!({"id": "n4"}), json!({"id": "n5"})]
        );
        assert_eq!(d.nodes.removed, vec![json!({"id": "n2"})]);
        let change = &d.nodes.changed[0];
        assert_eq!(change.id, json!("n1"));
        assert_eq!(
            serde_json::to_value(&change.patch).unwrap(),
            json!([{"op": "replace", "path": "/label", "value": "Hi"}])
        );
        assert_eq!(
            d.edges.added,
            vec![json!({"id": "e2", "from": "n1", "to": "n3"})]
        );
        assert_eq!(d.edges.removed.len(), 1);
        let s = d.summary;
        assert_eq!((s.nodes_added, s.nodes_removed, s.nodes_changed), (2, 1, 1));
        assert_eq!((s.edges_added, s.edges_removed, s.edges_changed), (1, 1, 0));
    }

    #[test]
    fn empty_old_graph_adds_everything() {
        let new = graph(json!([{"id": 1}, {"id": 2}]), json!([{"id": "e"}]));
        let d = diff(&empty(), &Value::Null, &new, &json!({"a": 1}));
        assert_eq!(d.summary.nodes_added, 2);
        assert_eq!(d.summary.edges_added, 1);
        assert_eq!(apply(&Value::Null, &d.variables_def), json!({"a": 1}));
    }

    #[test]
    fn nested_changes_have_a_patch_that_applies() {
        let before = json!({
            "id": "n", "data": {"a": [1, 2, {"b": 3}], "c": {"d": "x"}}, "tags": ["p", "q"]
        });
        let after = json!({
            "id": "n", "data": {"a": [1, {"b": 4}], "c": {"e": null}},
            "tags": ["p", "q", "r"], "new": true
        });
        let old = graph(json!([before]), json!([]));
        let new = graph(json!([after]), json!([]));
        let d = diff(&old, &Value::Null, &new, &Value::Null);
        let change = &d.nodes.changed[0];
        assert_eq!(change.before, before);
        assert_eq!(change.after, after);
        assert_eq!(apply(&change.before, &change.patch), after);
    }

    #[test]
    fn ids_compare_as_json_values() {
        let old = graph(json!([{"id": 1, "v": 1}, {"id": null, "v": 2}]), json!([]));
        let new = graph(
            json!([{"id": "1", "v": 1}, {"id": null, "v": 3}]),
            json!([]),
        );
        let d = diff(&old, &Value::Null, &new, &Value::Null);
        assert_eq!(
            d.nodes.added,
            vec![json!({"id": "1", "v": 1}), json!({"id": null, "v": 3})]
        );
        assert_eq!(
            d.nodes.removed,
            vec![json!({"id": 1, "v": 1}), json!({"id": null, "v": 2})]
        );
        assert!(d.nodes.changed.is_empty());
    }

    #[test]
    fn elements_without_ids_match_by_value() {
        let old = graph(json!([{"x": 1}, "text", {"x": 2}]), json!([]));
        let new = graph(json!([{"x": 2}, {"x": 3}, "text"]), json!([]));
        let d = diff(&old, &Value::Null, &new, &Value::Null);
        assert_eq!(d.nodes.added, vec![json!({"x": 3})]);
        assert_eq!(d.nodes.removed, vec![json!({"x": 1})]);
        assert!(d.nodes.changed.is_empty());
    }

    #[test]
    fn repeated_ids_match_by_value_as_a_multiset() {
        // "a" is repeated in old only: matched by value on both sides.
        let old = graph(
            json!([{"id": "a", "v": 1}, {"id": "a", "v": 1}, {"id": "a", "v": 1}, {"id": "b"}]),
            json!([]),
        );
        let new = graph(
            json!([{"id": "a", "v": 1}, {"id": "a", "v": 2}, {"id": "b"}]),
            json!([]),
        );
        let d = diff(&old, &Value::Null, &new, &Value::Null);
        assert_eq!(d.nodes.added, vec![json!({"id": "a", "v": 2})]);
        assert_eq!(d.nodes.removed, vec![json!({"id": "a", "v": 1}); 2]);
        assert!(d.nodes.changed.is_empty());
        // Repeated in new only: same matching.
        let d = diff(&new, &Value::Null, &old, &Value::Null);
        assert_eq!(d.nodes.removed, vec![json!({"id": "a", "v": 2})]);
        assert_eq!(d.nodes.added, vec![json!({"id": "a", "v": 1}); 2]);
    }

    #[test]
    fn reverse_diff_swaps_added_and_removed() {
        let old = graph(
            json!([{"id": 1}, {"id": 2, "v": "x"}, {"k": 0}]),
            json!([{"id": "e"}]),
        );
        let new = graph(json!([{"id": 2, "v": "y"}, {"id": 3}]), json!([]));
        let forward = diff(&old, &json!([1]), &new, &json!([1, 2]));
        let back = diff(&new, &json!([1, 2]), &old, &json!([1]));
        assert_eq!(forward.nodes.added, back.nodes.removed);
        assert_eq!(forward.nodes.removed, back.nodes.added);
        assert_eq!(forward.edges.removed, back.edges.added);
        assert_eq!(forward.nodes.changed[0].before, back.nodes.changed[0].after);
        assert_eq!(apply(&json!([1, 2]), &back.variables_def), json!([1]));
    }

    #[test]
    fn graph_members_and_variables_have_ops() {
        let old = json!({"nodes": [], "edges": [], "meta": {"zoom": 1}, "title": "t"});
        let new = json!({"nodes": [{"id": 1}], "edges": [], "meta": {"zoom": 2}, "start": "n1"});
        let (old_vars, new_vars) = (
            json!({"a": {"type": "int"}}),
            json!({"a": {"type": "str"}, "b": 1}),
        );
        let d = diff(&old, &old_vars, &new, &new_vars);
        let members = |g: &Value| plain_members(g);
        assert_eq!(apply(&members(&old), &d.graph), members(&new));
        assert_eq!(apply(&old_vars, &d.variables_def), new_vars);
        let paths: Vec<_> = d.graph.iter().map(|op| op.path().to_string()).collect();
        assert!(paths
            .iter()
            .all(|p| !p.starts_with("/nodes") && !p.starts_with("/edges")));
        assert_eq!(d.summary.nodes_added, 1);
    }

    #[test]
    fn non_array_element_members_count_as_empty() {
        let old = json!({"nodes": "oops", "edges": null});
        let new = graph(json!([{"id": 1}]), json!([]));
        let d = diff(&old, &Value::Null, &new, &Value::Null);
        assert_eq!(d.nodes.added, vec![json!({"id": 1})]);
    }

    // ----- merge -----

    fn merged(base: &Value, theirs: &Value, ours: &Value) -> Value {
        merge(
            (base, &Value::Null),
            (theirs, &Value::Null),
            (ours, &Value::Null),
        )
        .unwrap()
        .0
    }

    fn conflicts(base: &Value, theirs: &Value, ours: &Value) -> Vec<Conflict> {
        merge(
            (base, &Value::Null),
            (theirs, &Value::Null),
            (ours, &Value::Null),
        )
        .unwrap_err()
    }

    #[test]
    fn disjoint_edits_merge() {
        let base = graph(
            json!([{"id": 1, "v": 0}, {"id": 2, "v": 0}, {"id": 3}]),
            json!([{"id": "e1"}]),
        );
        let theirs = graph(
            json!([{"id": 1, "v": 1}, {"id": 2, "v": 0}, {"id": 3}]),
            json!([]),
        );
        let ours = graph(
            json!([{"id": 1, "v": 0}, {"id": 2, "v": 2}, {"id": 4}]),
            json!([{"id": "e1"}, {"id": "e2"}]),
        );
        let expected = graph(
            json!([{"id": 1, "v": 1}, {"id": 2, "v": 2}, {"id": 4}]),
            json!([{"id": "e2"}]),
        );
        assert_eq!(merged(&base, &theirs, &ours), expected);
    }

    #[test]
    fn the_same_edit_on_both_sides_is_one_edit() {
        let base = graph(json!([{"id": 1, "v": 0}, {"id": 2}, {"x": 1}]), json!([]));
        let both = graph(json!([{"id": 1, "v": 9}, {"id": 5}, {"x": 2}]), json!([]));
        assert_eq!(merged(&base, &both, &both), both);
    }

    #[test]
    fn edit_against_delete_conflicts() {
        let base = graph(json!([{"id": "n", "v": 0}]), json!([]));
        let theirs = graph(json!([]), json!([]));
        let ours = graph(json!([{"id": "n", "v": 1}]), json!([]));
        let found = conflicts(&base, &theirs, &ours);
        let expected = Conflict {
            kind: ConflictKind::Node,
            id: json!("n"),
            base: json!({"id": "n", "v": 0}),
            theirs: Value::Null,
            ours: json!({"id": "n", "v": 1}),
        };
        assert_eq!(found, vec![expected]);
        let wire = serde_json::to_value(&found[0]).unwrap();
        assert_eq!(wire["kind"], json!("node"));
        assert_eq!(wire["theirs"], Value::Null);
        // A delete against an untouched element deletes it.
        assert_eq!(merged(&base, &theirs, &base), theirs);
        assert_eq!(merged(&base, &base, &theirs), theirs);
    }

    #[test]
    fn different_edits_of_one_element_conflict() {
        let base = graph(
            json!([{"id": 1, "a": 0, "b": 0}]),
            json!([{"id": "e", "w": 0}]),
        );
        let theirs = graph(
            json!([{"id": 1, "a": 1, "b": 0}]),
            json!([{"id": "e", "w": 1}]),
        );
        let ours = graph(
            json!([{"id": 1, "a": 0, "b": 1}]),
            json!([{"id": "e", "w": 2}]),
        );
        let found = conflicts(&base, &theirs, &ours);
        let kinds: Vec<_> = found.iter().map(|c| (c.kind, c.id.clone())).collect();
        assert_eq!(
            kinds,
            vec![
                (ConflictKind::Node, json!(1)),
                (ConflictKind::Edge, json!("e"))
            ]
        );
    }

    #[test]
    fn both_adding_one_id_differently_conflicts() {
        let base = empty();
        let theirs = graph(json!([{"id": "x", "v": 1}]), json!([]));
        let ours = graph(json!([{"id": "x", "v": 2}]), json!([]));
        let found = conflicts(&base, &theirs, &ours);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].base, Value::Null);
        assert_eq!(found[0].theirs, json!({"id": "x", "v": 1}));
    }

    #[test]
    fn variables_merge_key_by_key() {
        let g = empty();
        let base = json!({"a": 1, "b": 1, "c": 1});
        let theirs = json!({"a": 2, "b": 1, "c": 1, "t": true});
        let ours = json!({"a": 1, "b": 3, "o": true});
        let (_, vars) = merge((&g, &base), (&g, &theirs), (&g, &ours)).unwrap();
        assert_eq!(vars, json!({"a": 2, "b": 3, "t": true, "o": true}));
        let ours = json!({"a": 5, "b": 1, "c": 6});
        let found = merge((&g, &base), (&g, &theirs), (&g, &ours)).unwrap_err();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].kind, ConflictKind::VariablesDef);
        assert_eq!(found[0].id, json!("a"));
        assert_eq!(
            (found[0].theirs.clone(), found[0].ours.clone()),
            (json!(2), json!(5))
        );
    }

    #[test]
    fn non_object_variables_merge_whole() {
        let g = empty();
        let (base, theirs, ours) = (Value::Null, json!({"a": 1}), json!({"b": 1}));
        let found = merge((&g, &base), (&g, &theirs), (&g, &ours)).unwrap_err();
        assert_eq!(found[0].id, Value::Null);
        assert_eq!(found[0].kind, ConflictKind::VariablesDef);
        let (_, vars) = merge((&g, &base), (&g, &base), (&g, &ours)).unwrap();
        assert_eq!(vars, ours);
        let (_, vars) = merge((&g, &json!([1])), (&g, &json!([2])), (&g, &json!([1]))).unwrap();
        assert_eq!(vars, json!([2]));
    }

    #[test]
    fn arrays_keep_theirs_order_and_append_ours_additions() {
        let base = graph(json!([{"id": 1}, {"id": 2}, {"id": 3}]), json!([]));
        let theirs = graph(
            json!([{"id": 3}, {"id": 9}, {"id": 1}, {"id": 2}]),
            json!([]),
        );
        let ours = graph(
            json!([{"id": 7}, {"id": 2}, {"id": 1}, {"id": 6}, {"id": 3}]),
            json!([]),
        );
        let ids: Vec<_> = elements(&merged(&base, &theirs, &ours), "nodes")
            .iter()
            .map(|n| n["id"].clone())
            .collect();
        assert_eq!(
            ids,
            vec![json!(3), json!(9), json!(1), json!(2), json!(7), json!(6)]
        );
    }

    #[test]
    fn value_matched_elements_merge_as_multisets() {
        let base = graph(json!(["a", "b", "b"]), json!([]));
        let theirs = graph(json!(["b", "b", "c"]), json!([]));
        let ours = graph(json!(["a", "b", "d", "c"]), json!([]));
        let result = merged(&base, &theirs, &ours);
        assert_eq!(result["nodes"], json!(["b", "c", "d"]));
        assert_eq!(merged_count(1, 3, 2), 3);
        assert_eq!(merged_count(2, 0, 3), 1);
    }

    #[test]
    fn other_graph_members_merge_whole() {
        let base = json!({"nodes": [], "edges": [], "meta": {"zoom": 1}, "title": "t", "gone": 1});
        let theirs = json!({"nodes": [], "edges": [], "meta": {"zoom": 2}, "title": "t"});
        let ours =
            json!({"nodes": [], "edges": [], "meta": {"zoom": 1}, "title": "u", "gone": 1, "x": 0});
        let expected = json!({"nodes": [], "edges": [], "meta": {"zoom": 2}, "title": "u", "x": 0});
        assert_eq!(merged(&base, &theirs, &ours), expected);
        let ours = json!({"nodes": [], "edges": [], "meta": {"zoom": 1, "pan": 0}, "gone": 2});
        let found = conflicts(&base, &theirs, &ours);
        let ids: Vec<_> = found.iter().map(|c| (c.kind, c.id.clone())).collect();
        // theirs' member order, then ours'; all of them, not just the first.
        assert_eq!(found.len(), 2);
        assert!(ids.contains(&(ConflictKind::Graph, json!("meta"))));
        assert!(ids.contains(&(ConflictKind::Graph, json!("gone"))));
    }

    #[test]
    fn all_conflicts_in_order() {
        let base = json!({"nodes": [{"id": 1}, {"id": 2}], "edges": [{"id": 1}], "m": 0});
        let theirs = json!({
            "nodes": [{"id": 2, "t": 1}, {"id": 1, "t": 1}], "edges": [{"id": 1, "t": 1}], "m": 1
        });
        let ours = json!({"nodes": [{"id": 1, "o": 1}, {"id": 2, "o": 1}], "edges": [], "m": 2});
        let vars = (json!({"k": 0}), json!({"k": 1}), json!({"k": 2}));
        let found = merge((&base, &vars.0), (&theirs, &vars.1), (&ours, &vars.2)).unwrap_err();
        let ids: Vec<_> = found.iter().map(|c| (c.kind, c.id.clone())).collect();
        let expected = vec![
            (ConflictKind::Node, json!(2)),
            (ConflictKind::Node, json!(1)),
            (ConflictKind::Edge, json!(1)),
            (ConflictKind::Graph, json!("m")),
            (ConflictKind::VariablesDef, json!("k")),
        ];
        assert_eq!(ids, expected);
        assert_eq!(
            serde_json::to_value(&found[4]).unwrap()["kind"],
            json!("variablesDef")
        );
    }

    #[test]
    fn five_thousand_nodes_diff_and_merge() {
        // Ours relabels every tenth node; theirs drops the nodes ending in 5.
        let make = |tag: &str, drop: bool| {
            let label = |i: usize| if i.is_multiple_of(10) { tag } else { "same" };
            let nodes: Vec<Value> = (0..5_000usize)
                .filter(|i| !(drop && i % 10 == 5))
                .map(|i| json!({"id": format!("n{i}"), "label": label(i), "data": {"i": i}}))
                .collect();
            let edges: Vec<Value> = (1..5_000usize)
                .map(|i| json!({"id": format!("e{i}"), "from": format!("n{}", i - 1), "to": i}))
                .collect();
            json!({"nodes": nodes, "edges": edges})
        };
        let (base, theirs, ours) = (make("base", false), make("base", true), make("ours", false));
        let d = diff(&base, &Value::Null, &ours, &Value::Null);
        assert_eq!(d.summary.nodes_changed, 500);
        let null = &Value::Null;
        let (graph, _) = merge((&base, null), (&theirs, null), (&ours, null)).unwrap();
        let nodes = elements(&graph, "nodes");
        assert_eq!(nodes.len(), 4_500);
        assert_eq!(nodes.iter().filter(|n| n["label"] == "ours").count(), 500);
    }

    // ----- properties -----

    /// The JSON text of `value` with object keys sorted: equal values give equal
    /// strings whatever the map's key order.
    fn canonical(value: &Value) -> String {
        let mut out = String::new();
        write_canonical(value, &mut out);
        out
    }

    /// Appends the canonical text of `value` to `out` (see [`canonical`]).
    fn write_canonical(value: &Value, out: &mut String) {
        match value {
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_canonical(item, out);
                }
                out.push(']');
            }
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                out.push('{');
                for (i, (key, item)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(key.clone()).to_string());
                    out.push(':');
                    write_canonical(item, out);
                }
                out.push('}');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (0i64..4).prop_map(Value::from),
            "[ab]{0,2}".prop_map(Value::String),
        ]
    }

    fn nested() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(3, 16, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-c]", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn element() -> impl Strategy<Value = Value> {
        let id = prop_oneof![
            Just(None),
            Just(Some(Value::Null)),
            Just(Some(json!("a"))),
            Just(Some(json!("b"))),
            Just(Some(json!(1))),
            Just(Some(json!("1"))),
            Just(Some(json!(2))),
        ];
        (id, nested(), prop::option::of(nested())).prop_map(|(id, label, data)| {
            let mut m = Map::new();
            if let Some(id) = id {
                m.insert("id".into(), id);
            }
            m.insert("label".into(), label);
            if let Some(data) = data {
                m.insert("data".into(), data);
            }
            Value::Object(m)
        })
    }

    fn version() -> impl Strategy<Value = (Value, Value)> {
        let elems = || prop::collection::vec(element(), 0..6);
        (elems(), elems(), prop::option::of(nested()), nested()).prop_map(|(n, e, meta, vars)| {
            let mut g = graph(Value::Array(n), Value::Array(e));
            if let Some(meta) = meta {
                g["meta"] = meta;
            }
            (g, vars)
        })
    }

    /// The sorted canonical texts of some elements: their multiset.
    fn multiset<'a>(items: impl IntoIterator<Item = &'a Value>) -> Vec<String> {
        let mut texts: Vec<_> = items.into_iter().map(canonical).collect();
        texts.sort();
        texts
    }

    /// Applies one element diff to `old` as multisets.
    fn apply_elements(old: &[Value], d: &ElementDiff) -> Vec<String> {
        let mut set = multiset(old);
        let mut remove = |v: &Value| {
            let at = set.iter().position(|t| *t == canonical(v)).unwrap();
            set.remove(at);
        };
        d.removed.iter().for_each(&mut remove);
        d.changed.iter().for_each(|c| remove(&c.before));
        set.extend(
            d.added
                .iter()
                .chain(d.changed.iter().map(|c| &c.after))
                .map(canonical),
        );
        set.sort();
        set
    }

    fn same_version(a: &(Value, Value), b: &(Value, Value)) -> bool {
        ELEMENT_ARRAYS
            .iter()
            .all(|m| multiset(elements(&a.0, m)) == multiset(elements(&b.0, m)))
            && plain_members(&a.0) == plain_members(&b.0)
            && a.1 == b.1
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn diff_patches_reproduce_the_new_version(old in version(), new in version()) {
            let d = diff(&old.0, &old.1, &new.0, &new.1);
            for (m, ed) in ELEMENT_ARRAYS.iter().zip([&d.nodes, &d.edges]) {
                for c in &ed.changed {
                    prop_assert_eq!(&apply(&c.before, &c.patch), &c.after);
                }
                let rebuilt = apply_elements(elements(&old.0, m), ed);
                prop_assert_eq!(rebuilt, multiset(elements(&new.0, m)));
            }
            prop_assert_eq!(apply(&plain_members(&old.0), &d.graph), plain_members(&new.0));
            prop_assert_eq!(apply(&old.1, &d.variables_def), new.1.clone());
            let back = diff(&new.0, &new.1, &old.0, &old.1);
            prop_assert_eq!(&back.nodes.added, &d.nodes.removed);
            prop_assert_eq!(&back.nodes.removed, &d.nodes.added);
            prop_assert_eq!(back.nodes.changed.len(), d.nodes.changed.len());
            prop_assert_eq!(diff(&old.0, &old.1, &old.0, &old.1).is_empty(), true);
        }

        #[test]
        fn merging_against_an_untouched_side_takes_the_other(base in version(), side in version()) {
            let b = (&base.0, &base.1);
            let s = (&side.0, &side.1);
            let ours = merge(b, b, s).unwrap();
            prop_assert!(same_version(&ours, &side));
            let theirs = merge(b, s, b).unwrap();
            prop_assert!(same_version(&theirs, &side));
            // With ours untouched the arrays are theirs', in theirs' order.
            for m in ELEMENT_ARRAYS {
                prop_assert_eq!(elements(&theirs.0, m), elements(&side.0, m));
            }
            prop_assert!(same_version(&merge(s, s, s).unwrap(), &side));
        }
    }
}
