"""Routing: who is offered an event, from the node's routes, the event and the trust list."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta

from gateway.core.routing import Route, Routing, route, values_at
from gateway.crypto.trust import Agency, TrustList
from gateway.types import AgencyId, CountryCode
from tests.unit.conftest import NOW

SEIZURE = "fxgw.SeizureEvent"
TRACE = "fxgw.TraceRequest"
RESPONSE = "fxgw.TraceResponse"


def _agency(
    agency_id: str, country: str, groups: tuple[str, ...] = (), roles: tuple[str, ...] = ()
) -> Agency:
    return Agency(
        AgencyId(agency_id),
        CountryCode(country),
        None,
        frozenset(groups),
        frozenset(roles),
        frozenset(),
        (),
    )


def _directory(*agencies: Agency) -> TrustList:
    """A trust-list value: routing needs ids, countries, groups and roles, no keys."""
    return TrustList(
        "test",
        1,
        NOW - timedelta(days=1),
        NOW + timedelta(days=30),
        b"\x00" * 32,
        {a.agency_id: a for a in agencies},
    )


DIRECTORY = _directory(
    _agency("NL-POL", "NL", ("EU", "INTERPOL"), ("trace",)),
    _agency("NL-KMAR", "NL", ("EU",)),
    _agency("BE-FPJ", "BE", ("EU", "INTERPOL"), ("trace",)),
    _agency("BE-DOUANE", "BE", ("EU",)),
    _agency("DE-BKA", "DE", ("EU", "INTERPOL"), ("trace",)),
    _agency("US-ATF", "US", ("INTERPOL",), ("trace",)),
    _agency("US-CBP", "US"),
)
"""Seven agencies in four countries; two groups; some with the trace role."""


def _route(
    *routes: Route,
    record: Mapping[str, object] | None = None,
    explicit: Sequence[str] = (),
    event_type: str = SEIZURE,
    sender: str = "NL-POL",
) -> Routing:
    return route(routes, event_type, record or {}, explicit, DIRECTORY, AgencyId(sender))


def _trace_record(manufacture: object, imported: object) -> dict[str, object]:
    return {"firearm": {"manufacture_country": manufacture, "import_country": imported}}


class TestValuesAt:
    """values_at reads dotted paths, walks lists with [], and skips what is absent."""

    def test_top_level_field(self) -> None:
        """A plain name yields the field's value."""
        assert ["NL"] == values_at({"country": "NL"}, "country")

    def test_nested_field(self) -> None:
        """Dots step into nested records."""
        record = {"requesting_agency": {"agency_id": "BE-FPJ", "country": "BE"}}
        assert ["BE-FPJ"] == values_at(record, "requesting_agency.agency_id")

    def test_brackets_walk_every_item(self) -> None:
        """``[]`` yields the field of every item, in list order."""
        record = {"firearms": [{"c": "BE"}, {"c": "US"}, {"c": "BE"}]}
        assert ["BE", "US", "BE"] == values_at(record, "firearms[].c")

    def test_brackets_skip_null_items_and_null_values(self) -> None:
        """A null item, a null value and an item without the field yield nothing."""
        record = {"firearms": [None, {"c": None}, {}, {"c": "DE"}]}
        assert ["DE"] == values_at(record, "firearms[].c")

    def test_nested_lists(self) -> None:
        """Several ``[]`` steps flatten lists inside lists."""
        record = {"a": [{"b": [{"c": 1}, {"c": 2}]}, {"b": []}, {"b": [{"c": 3}]}]}
        assert [1, 2, 3] == values_at(record, "a[].b[].c")

    def test_brackets_yield_the_items_themselves(self) -> None:
        """A path ending in ``[]`` yields the list's non-null items."""
        assert ["x", "y"] == values_at({"tags": ["x", None, "y"]}, "tags[]")

    def test_null_step_yields_nothing(self) -> None:
        """A null record on the way is not an error: the path yields nothing."""
        assert [] == values_at({"firearm": None}, "firearm.manufacture_country")

    def test_missing_step_yields_nothing(self) -> None:
        """A field the record does not have yields nothing."""
        assert [] == values_at({"firearm": {}}, "firearm.manufacture_country")
        assert [] == values_at({}, "firearm.manufacture_country")

    def test_scalar_in_the_middle_yields_nothing(self) -> None:
        """Stepping into a scalar yields nothing rather than failing."""
        assert [] == values_at({"firearm": "a pistol"}, "firearm.make")

    def test_list_is_not_walked_without_brackets(self) -> None:
        """Without ``[]`` a dot does not step into the items of a list."""
        assert [] == values_at({"firearms": [{"c": "BE"}]}, "firearms.c")

    def test_false_and_zero_are_values(self) -> None:
        """Only null is absent: false and 0 are found."""
        assert [False, 0] == values_at({"a": [{"b": False}, {"b": 0}]}, "a[].b")


class TestRoute:
    """route combines the matching routes and the explicit list against the trust list."""

    def test_group_members(self) -> None:
        """A group routes to its members, sorted by id, without the sender."""
        outcome = _route(Route(SEIZURE, groups=("EU",)))
        assert ("BE-DOUANE", "BE-FPJ", "DE-BKA", "NL-KMAR") == outcome.recipients
        assert () == outcome.unknown

    def test_country_members(self) -> None:
        """A country routes to every agency of that country."""
        assert ("US-ATF", "US-CBP") == _route(Route(SEIZURE, countries=("US",))).recipients

    def test_listed_agencies(self) -> None:
        """Listed agencies are routed in the order given."""
        routing = _route(Route(SEIZURE, agencies=("US-ATF", "BE-FPJ")))
        assert ("US-ATF", "BE-FPJ") == routing.recipients

    def test_routes_of_other_event_types_are_ignored(self) -> None:
        """Only routes for the event's type count."""
        routing = _route(Route(TRACE, groups=("EU",)), Route(SEIZURE, agencies=("US-ATF",)))
        assert ("US-ATF",) == routing.recipients

    def test_no_route_routes_to_nobody(self) -> None:
        """An event type without a route and without explicit recipients goes nowhere."""
        assert Routing((), ()) == _route(Route(TRACE, groups=("EU",)))

    def test_matching_routes_are_combined(self) -> None:
        """Every matching route contributes, in route order."""
        routing = _route(Route(SEIZURE, countries=("DE",)), Route(SEIZURE, countries=("US",)))
        assert ("DE-BKA", "US-ATF", "US-CBP") == routing.recipients

    def test_agencies_from_a_field(self) -> None:
        """agencies_from reads agency ids out of the event (a response goes back to the asker)."""
        record = {"requesting_agency": {"agency_id": "BE-FPJ", "country": "BE"}}
        routing = _route(
            Route(RESPONSE, agencies_from=("requesting_agency.agency_id",)),
            record=record,
            event_type=RESPONSE,
        )
        assert ("BE-FPJ",) == routing.recipients

    def test_agencies_from_ignores_non_strings_and_empty(self) -> None:
        """Only non-empty strings found at the path count as agency ids."""
        record = {"refs": [{"id": 7}, {"id": ""}, {"id": "DE-BKA"}, {"id": True}]}
        routing = _route(Route(SEIZURE, agencies_from=("refs[].id",)), record=record)
        assert Routing((AgencyId("DE-BKA"),), ()) == routing

    def test_countries_from_without_role(self) -> None:
        """countries_from takes every agency of each country found."""
        routing = _route(
            Route(TRACE, countries_from=("firearm.manufacture_country", "firearm.import_country")),
            record=_trace_record("BE", "US"),
            event_type=TRACE,
        )
        assert ("BE-DOUANE", "BE-FPJ", "US-ATF", "US-CBP") == routing.recipients

    def test_countries_from_with_role(self) -> None:
        """With a role, only the agencies holding it in the trust list are taken."""
        routing = _route(
            Route(
                TRACE,
                countries_from=("firearm.manufacture_country", "firearm.import_country"),
                role="trace",
            ),
            record=_trace_record("BE", "US"),
            event_type=TRACE,
        )
        assert ("BE-FPJ", "US-ATF") == routing.recipients

    def test_countries_from_role_nobody_holds(self) -> None:
        """A role no agency of the country holds routes to nobody."""
        routing = _route(
            Route(TRACE, countries_from=("firearm.manufacture_country",), role="customs"),
            record=_trace_record("BE", None),
            event_type=TRACE,
        )
        assert () == routing.recipients

    def test_countries_from_accepts_lower_case(self) -> None:
        """A country code in lower case is matched as its capital form."""
        routing = _route(
            Route(TRACE, countries_from=("firearm.manufacture_country",), role="trace"),
            record=_trace_record("de", None),
            event_type=TRACE,
        )
        assert ("DE-BKA",) == routing.recipients

    def test_countries_from_a_list_of_records(self) -> None:
        """countries_from walks ``[]`` paths: every firearm's country counts."""
        record = {"firearms": [{"manufacture_country": "DE"}, {"manufacture_country": "US"}]}
        routing = _route(
            Route(SEIZURE, countries_from=("firearms[].manufacture_country",), role="trace"),
            record=record,
        )
        assert ("DE-BKA", "US-ATF") == routing.recipients

    def test_absent_country_routes_to_nobody(self) -> None:
        """A null or missing country is no error; it simply routes to no one."""
        routing = _route(
            Route(TRACE, countries_from=("firearm.manufacture_country", "firearm.import_country")),
            record={"firearm": None},
            event_type=TRACE,
        )
        assert Routing((), ()) == routing

    def test_unknown_country_routes_to_nobody(self) -> None:
        """A country with no agency on the trust list yields no recipient and no unknown."""
        routing = _route(
            Route(TRACE, countries_from=("firearm.manufacture_country",)),
            record=_trace_record("BR", None),
            event_type=TRACE,
        )
        assert Routing((), ()) == routing

    def test_explicit_recipients(self) -> None:
        """Recipients the national system names on the event are routed without a route."""
        assert ("US-CBP", "DE-BKA") == _route(explicit=("US-CBP", "DE-BKA")).recipients

    def test_explicit_recipients_come_first(self) -> None:
        """Explicit recipients precede those the routes add."""
        routing = _route(Route(SEIZURE, countries=("DE",)), explicit=("US-ATF",))
        assert ("US-ATF", "DE-BKA") == routing.recipients

    def test_unknown_ids_are_reported_not_routed(self) -> None:
        """Ids not on the trust list, from any source, land in ``unknown`` in order of mention;
        one read from an event field is reported by the field's path, never by its value."""
        record = {"requesting_agency": {"agency_id": "QQ-GONE"}}
        routing = _route(
            Route(SEIZURE, agencies=("ZZ-OLD", "BE-FPJ")),
            Route(SEIZURE, agencies_from=("requesting_agency.agency_id",)),
            record=record,
            explicit=("XX-NOPE",),
        )
        assert ("BE-FPJ",) == routing.recipients
        assert (
            "XX-NOPE",
            "ZZ-OLD",
            "an agency id in event field 'requesting_agency.agency_id'",
        ) == routing.unknown

    def test_agency_ids_are_case_sensitive(self) -> None:
        """An id in the wrong case is not the listed agency: it is unknown."""
        assert Routing((), ("be-fpj",)) == _route(explicit=("be-fpj",))

    def test_unknown_ids_are_reported_once(self) -> None:
        """An unknown id named twice is reported once."""
        routing = _route(Route(SEIZURE, agencies=("XX-NOPE",)), explicit=("XX-NOPE", "XX-NOPE"))
        assert ("XX-NOPE",) == routing.unknown

    def test_sender_is_never_a_recipient(self) -> None:
        """The sender is dropped whichever way it is named, and is not reported as unknown."""
        record = {"requesting_agency": {"agency_id": "NL-POL"}}
        routing = _route(
            Route(SEIZURE, groups=("EU",), countries=("NL",), agencies=("NL-POL",)),
            Route(SEIZURE, agencies_from=("requesting_agency.agency_id",)),
            Route(SEIZURE, countries_from=("firearm.manufacture_country",), role="trace"),
            record={**record, **_trace_record("NL", None)},
            explicit=("NL-POL",),
        )
        assert "NL-POL" not in routing.recipients
        assert () == routing.unknown
        assert ("BE-DOUANE", "BE-FPJ", "DE-BKA", "NL-KMAR") == routing.recipients

    def test_sender_depends_on_who_sends(self) -> None:
        """The same route from another sender includes NL-POL and leaves out that sender."""
        routing = _route(Route(SEIZURE, groups=("EU",)), sender="DE-BKA")
        assert ("BE-DOUANE", "BE-FPJ", "NL-KMAR", "NL-POL") == routing.recipients

    def test_recipients_are_deduplicated_in_first_mention_order(self) -> None:
        """An agency named several ways appears once, where it was first named."""
        routing = _route(
            Route(SEIZURE, countries=("BE",)),
            Route(SEIZURE, groups=("INTERPOL",)),
            Route(SEIZURE, agencies=("BE-FPJ", "US-ATF")),
            explicit=("US-ATF", "BE-FPJ"),
        )
        assert ("US-ATF", "BE-FPJ", "BE-DOUANE", "DE-BKA") == routing.recipients

    def test_order_is_stable(self) -> None:
        """Routing the same event twice gives the same recipients in the same order."""
        routes = (
            Route(SEIZURE, groups=("INTERPOL", "EU")),
            Route(SEIZURE, countries=("US",)),
        )
        assert _route(*routes, explicit=("DE-BKA",)) == _route(*routes, explicit=("DE-BKA",))
        assert (
            "DE-BKA",
            "BE-FPJ",
            "US-ATF",
            "BE-DOUANE",
            "NL-KMAR",
            "US-CBP",
        ) == _route(*routes, explicit=("DE-BKA",)).recipients

    def test_sandbox_trace_request_goes_to_the_tracing_countries(self, trust: TrustList) -> None:
        """On the sandbox list, a trace of a Belgian pistol imported to the US asks BE and US."""
        routing = route(
            (
                Route(
                    TRACE,
                    countries_from=("firearm.manufacture_country", "firearm.import_country"),
                    role="trace",
                ),
            ),
            TRACE,
            _trace_record("BE", "US"),
            (),
            trust,
            AgencyId("NL-POL"),
        )
        assert Routing((AgencyId("BE-FPJ"), AgencyId("US-ATF")), ()) == routing
