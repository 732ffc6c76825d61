"""Regenerate the corpus's PDFs: `python -m tests.rag.make_pdfs` (matplotlib, text kept as real text)."""

from __future__ import annotations

import textwrap
from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent / "data" / "rag_corpus"

PDFS: dict[str, tuple[str, list[list[str]]]] = {
    "finance/travel-policy.pdf": (
        "Business travel policy",
        [
            [
                "Booking travel",
                "All business trips are booked through the travel agency TripNest at least ten days before "
                "departure. Trains are preferred over flights for journeys shorter than six hours.",
                "Flights of more than eight hours may be booked in premium economy; "
                "business class is never reimbursed.",
            ],
            [
                "Daily allowance",
                "Travellers receive a daily meal allowance of 45 euros for each full day abroad, and 20 euros "
                "for a day trip. Hotels are reimbursed up to 180 euros per night in capital cities.",
                "Travel insurance is arranged by the company; travellers download the insurance card "
                "from the TripNest app.",
            ],
        ],
    ),
    "hr/benefits.pdf": (
        "Health insurance and pension",
        [
            [
                "Health insurance",
                "Quillfield pays 70 percent of the premium of the collective health insurance with Harborcare, "
                "including dental cover. Partners and children can join the policy at the same discounted rate.",
            ],
            [
                "Pension plan",
                "The company pension plan is a defined contribution scheme. Quillfield contributes 8 percent of "
                "the gross salary and the employee contributes 4 percent. Employees join the plan on their first day.",
            ],
        ],
    ),
}


def write_pdf(path: Path, title: str, pages: list[list[str]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["pdf.fonttype"] = 42  # TrueType text: pypdf extracts it as text
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    with PdfPages(path, metadata={"Title": title, "CreationDate": None}) as pdf:
        for number, (heading, *paragraphs) in enumerate(pages, start=1):
            figure = plt.figure(figsize=(8.27, 11.69))
            y = 0.93
            if number == 1:
                figure.text(0.08, y, title, fontsize=18)
                y -= 0.05
            figure.text(0.08, y, heading, fontsize=14)
            y -= 0.04
            for paragraph in paragraphs:
                for line in textwrap.wrap(paragraph, 90):
                    figure.text(0.08, y, line, fontsize=10)
                    y -= 0.022
                y -= 0.02
            pdf.savefig(figure)
            plt.close(figure)


def main() -> None:
    for relative, (title, pages) in PDFS.items():
        write_pdf(CORPUS / relative, title, pages)


if __name__ == "__main__":
    main()
